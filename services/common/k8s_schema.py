"""Offline validation of Kubernetes objects: the API's JSON schemas with unknown fields rejected,
and the pod security rules of the tuneplex namespace.

One check for everything tuneplex hands to a cluster: `make k8s-check` runs it over the rendered
kustomize overlays, and the trainer's Kubernetes runner can run it over the Jobs it builds, so a
typo in a field name, or a pod that restricted Pod Security would refuse at admission, fails here
instead of at deploy time.

The schemas ship inside the `kubernetes-validate` wheel, so no network is needed. It is a `dev`
dependency and imported lazily: code that only builds manifests does not pay for it.

    python -m services.common.k8s_schema rendered.yaml [-k 1.33.0]   # exit 1 on any error
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The Kubernetes versions we validate against: the oldest we support (so no field newer than it
# sneaks in) and the newest the pinned kubernetes-validate knows (so no API removed since then
# is used). Both are pinned on purpose: a check that moves with the tool is not reproducible.
MIN_K8S_VERSION = "1.33.0"
MAX_K8S_VERSION = "1.37.0"
K8S_VERSIONS = (MIN_K8S_VERSION, MAX_K8S_VERSION)


def _describe(doc: dict[str, Any], index: int) -> str:
    kind = doc.get("kind") or "?"
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    name = meta.get("name") or meta.get("generateName") or f"#{index}"
    return f"{kind}/{name}"


def validate_manifests(docs: Iterable[Any], k8s_version: str = MIN_K8S_VERSION) -> list[str]:
    """Validate each object strictly against Kubernetes ``k8s_version``'s schemas.

    Returns one message per invalid object (empty when all are valid). An object whose kind has
    no schema counts as an error, not a warning as in the ``kubernetes-validate`` CLI: every kind
    tuneplex ships is built in, so a missing schema means a misspelt kind or apiVersion.
    """
    from kubernetes_validate import utils as kv

    errors: list[str] = []
    for index, doc in enumerate(docs):
        if doc is None:  # an empty YAML document between two `---`
            continue
        if not isinstance(doc, dict):
            errors.append(f"#{index}: not a mapping but {type(doc).__name__}")
            continue
        what = _describe(doc, index)
        if not doc.get("apiVersion") or not doc.get("kind"):
            errors.append(f"{what}: apiVersion and kind are required")
            continue
        try:
            kv.validate(doc, k8s_version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path) or "(top level)"
            errors.append(f"{what}: {path}: {exc.message} (Kubernetes {exc.version})")
        except kv.SchemaNotFoundError as exc:
            errors.append(f"{what}: {exc.message}")
        except kv.VersionNotSupportedError as exc:
            raise ValueError(exc.message) from exc
        except IndexError as exc:  # older than the oldest schema set in the wheel
            raise ValueError(f"kubernetes-validate has no schemas for {k8s_version}") from exc
    return errors


# The tuneplex namespace enforces the `restricted` Pod Security Standard; on top of it every
# container gets a read-only root filesystem and CPU/memory requests and limits. Pods built in
# code (the trainer's Jobs) can start from these two dicts. The uid is the images' user.
TUNEPLEX_UID = 10001
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": TUNEPLEX_UID,
    "runAsGroup": TUNEPLEX_UID,
    "fsGroup": TUNEPLEX_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": TUNEPLEX_UID,
    "runAsGroup": TUNEPLEX_UID,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Labels of the trainer's Job pods: the registry's NetworkPolicy admits this component.
TRAINER_JOB_LABELS = {
    "app.kubernetes.io/part-of": "tuneplex",
    "app.kubernetes.io/component": "trainer-job",
}


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    elif kind not in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return None
    return (spec.get("template") or {}).get("spec")


def pod_security_errors(docs: Iterable[Any]) -> list[str]:
    """What restricted Pod Security (plus our read-only root and resource rules) would object
    to in the pods these workloads create; empty when every pod passes."""
    errors: list[str] = []
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            continue
        spec = _pod_spec(doc)
        if spec is None:
            continue
        what = _describe(doc, index)
        pod_sc = spec.get("securityContext") or {}
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(field):
                errors.append(f"{what}: {field} is not allowed")
        for volume in spec.get("volumes") or []:
            if "hostPath" in volume:
                errors.append(f"{what}: hostPath volume {volume.get('name')} is not allowed")
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            at = f"{what} container {c.get('name')}"
            sc = c.get("securityContext") or {}
            effective = {**pod_sc, **sc}  # a container's setting wins over its pod's
            if effective.get("runAsNonRoot") is not True:
                errors.append(f"{at}: runAsNonRoot must be true")
            if effective.get("runAsUser") == 0:
                errors.append(f"{at}: runAsUser must not be 0")
            if sc.get("privileged"):
                errors.append(f"{at}: privileged is not allowed")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{at}: allowPrivilegeEscalation must be false")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                errors.append(f"{at}: capabilities.drop must include ALL")
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                errors.append(f"{at}: capabilities.add {caps['add']} is not allowed")
            seccomp = (effective.get("seccompProfile") or {}).get("type")
            if seccomp not in {"RuntimeDefault", "Localhost"}:
                errors.append(f"{at}: seccompProfile must be RuntimeDefault (got {seccomp})")
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{at}: readOnlyRootFilesystem must be true")
            if any(p.get("hostPort") for p in c.get("ports") or []):
                errors.append(f"{at}: hostPort is not allowed")
            resources = c.get("resources") or {}
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - (resources.get(kind) or {}).keys()
                if missing:
                    errors.append(f"{at}: resources.{kind} lacks {', '.join(sorted(missing))}")
    return errors


def load_manifests(text: str) -> list[Any]:
    """Parse a multi-document YAML stream (what `kubectl kustomize` prints), skipping empties."""
    import yaml

    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.k8s_schema",
        description="Validate Kubernetes YAML offline and strictly (unknown fields rejected).",
    )
    parser.add_argument("files", nargs="+", help="YAML files; - reads stdin")
    parser.add_argument(
        "-k",
        "--k8s-version",
        action="append",
        help=f"Kubernetes version(s) to validate against (default: {' and '.join(K8S_VERSIONS)})",
    )
    args = parser.parse_args(argv)
    versions = args.k8s_version or list(K8S_VERSIONS)

    import yaml

    failed = False
    for name in args.files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
            docs = load_manifests(text)
        except (OSError, yaml.YAMLError) as exc:
            print(f"ERROR {name}: {exc}", file=sys.stderr)
            failed = True
            continue
        for version in versions:
            errors = validate_manifests(docs, version)
            for error in errors:
                print(f"ERROR {name}: {error}", file=sys.stderr)
            failed |= bool(errors)
            if not errors:
                print(f"ok    {name}: {len(docs)} objects valid against Kubernetes {version}")
        errors = pod_security_errors(docs)
        for error in errors:
            print(f"ERROR {name}: {error}", file=sys.stderr)
        failed |= bool(errors)
        if not errors:
            print(f"ok    {name}: every pod meets restricted Pod Security")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
