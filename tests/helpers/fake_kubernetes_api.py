"""A fake of an outside system: the slice of the Kubernetes API server (and of the Job controller
and kubelet behind it) that the trainer's Kubernetes runner calls, as a real HTTP server on
loopback that the real ``kubernetes`` Python client talks to.

What it holds the runner to, request by request:
- a bearer token (401 Unauthorized otherwise) and the shipped Role (`k8s/base/trainer-rbac.yaml`:
  403 Forbidden for a verb, resource or namespace it does not grant);
- every Job body strictly valid against both pinned Kubernetes OpenAPI schema sets (422 Invalid),
  a DNS-1123 name, the URL's namespace (400), no duplicate (409), and restricted Pod Security on
  its pod template (403; the real API admits the Job and refuses its pods, which is stricter to
  see here as a refusal up front);
- only the routes and query parameters the runner may use: create/get/list/delete of Jobs,
  list of Pods, a Pod's log (404 NotFound for another path, 405 for another method, 400 for a
  query parameter it does not implement, watch included: the runner polls).

What it answers is shaped like the API's (each Job and Pod it serves passes the same strict
schemas): the Job controller's labels and selector, a pod that goes Pending -> Running ->
Succeeded/Failed with the container's exit code, Job status counters and conditions, Foreground
deletion that keeps the Job (with a deletionTimestamp) until its pods are gone, logs streamed in
chunks cut in the middle of lines.

What it cannot prove: that a real API server, scheduler, kubelet, CSI driver or GPU device plugin
behave as modelled here (admission plugins, defaulting beyond the fields above, quotas, real
scheduling, volume mounts, image pulls, log rotation, watch). Those need a real cluster.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from services.common.k8s_schema import K8S_VERSIONS, pod_security_errors, validate_manifests

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# How long Foreground deletion keeps a Job after its pods are told to stop (the GC's pace).
DELETE_SECONDS = 0.3

ROUTES = [
    # (method, path pattern, verb, API group, resource, query parameters implemented)
    ("POST", r"/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs", "create", "batch", "jobs", set()),
    (
        "GET",
        r"/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs",
        "list",
        "batch",
        "jobs",
        {"labelSelector"},
    ),
    (
        "GET",
        r"/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)",
        "get",
        "batch",
        "jobs",
        set(),
    ),
    (
        "DELETE",
        r"/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)",
        "delete",
        "batch",
        "jobs",
        {"propagationPolicy", "gracePeriodSeconds"},
    ),
    ("GET", r"/api/v1/namespaces/(?P<ns>[^/]+)/pods", "list", "", "pods", {"labelSelector"}),
    (
        "GET",
        r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log",
        "get",
        "",
        "pods/log",
        {"follow"},
    ),
]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """The API's error body (a meta/v1 Status)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, **details: Any):
        super().__init__(message)
        self.code, self.body = code, status(code, reason, message, **details)


@dataclass
class PodScript:
    """What the container of a Job's pod does: print ``lines`` then exit with ``exit_code``
    (None: run until deleted); ``unschedulable``: stay Pending, as with no node that fits."""

    lines: list[str] = field(default_factory=list)
    exit_code: int | None = 0
    unschedulable: bool = False


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in selector.split(","):
        key, sep, value = term.partition("=")
        if not sep or not key:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        if labels.get(key) != value.removeprefix("="):
            return False
    return True


class FakeKubernetesAPI:
    def __init__(self, role: dict[str, Any], *, namespace: str, user: str, token: str):
        self.role, self.namespace, self.user, self.token = role, namespace, user, token
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.scripts: list[PodScript] = []  # one per Job created, in order
        self.created: list[dict[str, Any]] = []  # Job bodies as the runner sent them
        self.calls: list[str] = []  # "VERB resource[/name]" in order
        self.lock = threading.RLock()
        self.stopped: dict[str, threading.Event] = {}  # pod name -> killed
        handler = type("Handler", (_Handler,), {"api": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeKubernetesAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for stopped in self.stopped.values():
            stopped.set()
        self.server.shutdown()
        self.server.server_close()

    # --- authorization ------------------------------------------------------------------------

    def authorize(self, headers, verb: str, group: str, resource: str, ns: str) -> None:
        if headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        granted = ns == self.namespace and any(
            group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
            for rule in self.role["rules"]
        )
        if not granted:
            kind = resource if not group else f"{resource}.{group}"
            raise ApiError(
                403,
                "Forbidden",
                f'{kind} is forbidden: User "{self.user}" cannot {verb} resource "{resource}" '
                f'in API group "{group}" in the namespace "{ns}"',
            )

    # --- Jobs ---------------------------------------------------------------------------------

    def create_job(self, ns: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("kind") != "Job":
            raise ApiError(400, "BadRequest", "the body is not a batch/v1 Job")
        errors = [e for v in K8S_VERSIONS for e in validate_manifests([body], v)]
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        if not NAME.match(name) or len(name) > 63:
            errors.append(f"metadata.name: Invalid value: {name!r}: must be a DNS-1123 label")
        if errors:
            raise ApiError(422, "Invalid", f'Job.batch "{name}" is invalid: {"; ".join(errors)}')
        if meta.get("namespace", ns) != ns:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        if violations := pod_security_errors([body]):
            raise ApiError(
                403,
                "Forbidden",
                f'jobs "{name}" is forbidden: violates PodSecurity "restricted:latest": '
                + "; ".join(violations),
            )
        with self.lock:
            if name in self.jobs:
                raise ApiError(
                    409, "AlreadyExists", f'jobs.batch "{name}" already exists', name=name
                )
            self.created.append(json.loads(json.dumps(body)))
            script = self.scripts.pop(0) if self.scripts else PodScript()
            job = self._admit_job(ns, body)
            self.jobs[name] = job
            self._start_pod(job, script)
            return job

    def _admit_job(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        """The Job as the API stores it: identity, the controller's selector and pod labels."""
        job = json.loads(json.dumps(body))
        uid = str(uuid.uuid4())
        job["metadata"].update(
            namespace=ns, uid=uid, resourceVersion="1", creationTimestamp=now(), generation=1
        )
        controller = {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": job["metadata"]["name"],
            "controller-uid": uid,
            "job-name": job["metadata"]["name"],
        }
        template = job["spec"]["template"]
        template.setdefault("metadata", {}).setdefault("labels", {}).update(controller)
        job["spec"]["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        job["status"] = {}
        self._check_shape(job)
        return job

    def _job_status(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        phase = pod["status"]["phase"]
        counts = {"Running": "active", "Succeeded": "succeeded", "Failed": "failed"}
        job["status"] = {"startTime": job["metadata"]["creationTimestamp"]}
        if phase in counts:
            job["status"][counts[phase]] = 1
        if phase in ("Succeeded", "Failed"):
            kind = "Complete" if phase == "Succeeded" else "Failed"
            job["status"]["conditions"] = [
                {
                    "type": kind,
                    "status": "True",
                    "lastProbeTime": now(),
                    "lastTransitionTime": now(),
                    "reason": "Completed" if phase == "Succeeded" else "BackoffLimitExceeded",
                }
            ]
            if phase == "Succeeded":
                job["status"]["completionTime"] = now()
        self._check_shape(job)

    def list_jobs(self, ns: str, selector: str | None) -> dict[str, Any]:
        with self.lock:
            items = [
                j
                for j in self.jobs.values()
                if j["metadata"]["namespace"] == ns
                and (selector is None or selector_matches(selector, j["metadata"]["labels"]))
            ]
        return {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": items}

    def get_job(self, ns: str, name: str) -> dict[str, Any]:
        with self.lock:
            job = self.jobs.get(name)
        if job is None or job["metadata"]["namespace"] != ns:
            raise ApiError(
                404,
                "NotFound",
                f'jobs.batch "{name}" not found',
                name=name,
                group="batch",
                kind="jobs",
            )
        return job

    def delete_job(self, ns: str, name: str, query: dict[str, str]) -> dict[str, Any]:
        policy = query.get("propagationPolicy", "Background")
        if policy not in ("Foreground", "Background", "Orphan"):
            raise ApiError(400, "BadRequest", f"unknown propagationPolicy {policy!r}")
        with self.lock:
            job = self.get_job(ns, name)
            pods = [p for p in self.pods.values() if p["metadata"]["labels"]["job-name"] == name]
            if policy == "Orphan":
                del self.jobs[name]
                return job
            job["metadata"]["deletionTimestamp"] = now()
            job["metadata"]["deletionGracePeriodSeconds"] = 0
            if policy == "Foreground":
                job["metadata"]["finalizers"] = ["foregroundDeletion"]
            else:
                del self.jobs[name]
            for pod in pods:
                self._kill(pod)

        def collect() -> None:
            with self.lock:
                for pod in pods:
                    self.pods.pop(pod["metadata"]["name"], None)
                self.jobs.pop(name, None)

        threading.Timer(DELETE_SECONDS, collect).start()
        return job

    # --- Pods: the Job controller and the kubelet ---------------------------------------------

    def _start_pod(self, job: dict[str, Any], script: PodScript) -> None:
        template = job["spec"]["template"]
        name = f"{job['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        spec = json.loads(json.dumps(template["spec"]))
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": job["metadata"]["namespace"],
                "uid": str(uuid.uuid4()),
                "labels": dict(template["metadata"]["labels"]),
                "creationTimestamp": now(),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job["metadata"]["name"],
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
            "status": {},
        }
        pod["_script"] = script
        self.pods[name] = pod
        self.stopped[name] = threading.Event()
        if script.unschedulable:
            self._set_phase(pod, "Pending")
        else:
            self._set_phase(pod, "Running")

    def _set_phase(self, pod: dict[str, Any], phase: str, exit_code: int | None = None) -> None:
        container = pod["spec"]["containers"][0]
        state: dict[str, Any]
        if phase == "Pending":
            pod["status"] = {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                        "lastTransitionTime": now(),
                    }
                ],
            }
        else:
            if phase == "Running":
                state = {"running": {"startedAt": now()}}
            else:
                state = {
                    "terminated": {
                        "exitCode": exit_code,
                        "startedAt": now(),
                        "finishedAt": now(),
                        "reason": "Completed" if exit_code == 0 else "Error",
                    }
                }
            pod["status"] = {
                "phase": phase,
                "startTime": now(),
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": f"{container['image']}@sha256:{'0' * 64}",
                        "ready": phase == "Running",
                        "restartCount": 0,
                        "started": True,
                        "state": state,
                    }
                ],
            }
        self._check_shape({k: v for k, v in pod.items() if k != "_script"})
        job = self.jobs.get(pod["metadata"]["labels"]["job-name"])
        if job is not None and "deletionTimestamp" not in job["metadata"]:
            self._job_status(job, pod)

    def _kill(self, pod: dict[str, Any]) -> None:
        if pod["status"]["phase"] in ("Pending", "Running"):
            self._set_phase(pod, "Failed", exit_code=143)
        self.stopped[pod["metadata"]["name"]].set()

    def list_pods(self, ns: str, selector: str | None) -> dict[str, Any]:
        with self.lock:
            items = [
                {k: v for k, v in p.items() if k != "_script"}
                for p in self.pods.values()
                if p["metadata"]["namespace"] == ns
                and (selector is None or selector_matches(selector, p["metadata"]["labels"]))
            ]
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def pod_log(self, ns: str, name: str):
        """The container's output in chunks, each line cut in two, until the container ends."""
        with self.lock:
            pod = self.pods.get(name)
            if pod is None or pod["metadata"]["namespace"] != ns:
                raise ApiError(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods")
            if pod["status"]["phase"] == "Pending":
                raise ApiError(
                    400,
                    "BadRequest",
                    f'container "worker" in pod "{name}" is waiting to start: ContainerCreating',
                )
            script: PodScript = pod["_script"]
        for line in script.lines:
            data = (line + "\n").encode()
            half = len(data) // 2
            yield data[:half]
            yield data[half:]
            time.sleep(0.01)
        if script.exit_code is None:
            self.stopped[name].wait()
        with self.lock:
            if pod["status"]["phase"] == "Running":
                assert script.exit_code is not None
                self._set_phase(
                    pod, "Succeeded" if script.exit_code == 0 else "Failed", script.exit_code
                )

    @staticmethod
    def _check_shape(obj: dict[str, Any]) -> None:
        errors = validate_manifests([obj], K8S_VERSIONS[-1])
        assert errors == [], f"the fake API would answer an object the API would not: {errors}"


class _Handler(BaseHTTPRequestHandler):
    api: FakeKubernetesAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            result = self._route(method, url.path, parse_qs(url.query), raw)
        except ApiError as exc:
            self._json(exc.code, exc.body)
            return
        if isinstance(result, dict):
            self._json(200 if method != "POST" else 201, result)
        else:
            self._stream(result)

    def _route(self, method: str, path: str, query: dict[str, list[str]], raw: bytes):
        api = self.api
        known_path = False
        for route_method, pattern, verb, group, resource, params in ROUTES:
            match = re.fullmatch(pattern, path)
            if not match:
                continue
            known_path = True
            if route_method != method:
                continue
            args = match.groupdict()
            ns, name = args["ns"], args.get("name")
            api.authorize(self.headers, verb, group, resource, ns)
            extra = set(query) - params - {"pretty"}
            if extra:
                raise ApiError(400, "BadRequest", f"query parameters not implemented: {extra}")
            flat = {k: v[0] for k, v in query.items()}
            api.calls.append(f"{verb} {resource}" + (f"/{name}" if name else ""))
            if verb == "create":
                # The API reads a body without Content-Type as its first media type, JSON (the
                # generated client of kubernetes>=35 sends none).
                media = self.headers.get("Content-Type", "").split(";")[0] or "application/json"
                if media != "application/json":
                    raise ApiError(415, "UnsupportedMediaType", f"cannot read {media}")
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise ApiError(400, "BadRequest", "the body is not JSON") from None
                return api.create_job(ns, body)
            if resource == "jobs" and verb == "list":
                return api.list_jobs(ns, flat.get("labelSelector"))
            if resource == "jobs" and verb == "get":
                return api.get_job(ns, name)
            if resource == "jobs" and verb == "delete":
                return api.delete_job(ns, name, flat)
            if resource == "pods":
                return api.list_pods(ns, flat.get("labelSelector"))
            if flat.get("follow") != "true":
                raise ApiError(400, "BadRequest", "this fake only streams logs (follow=true)")
            return api.pod_log(ns, name)
        if known_path:
            ns = path.split("/namespaces/")[1].split("/")[0]
            resource = (
                "pods/log"
                if path.endswith("/log")
                else path.split("/")[-2 if path.count("/") > 5 else -1]
            )
            group = "batch" if path.startswith("/apis/batch/") else ""
            verb = {"PUT": "update", "PATCH": "patch"}.get(method, method.lower())
            api.authorize(self.headers, verb, group, resource, ns)
            raise ApiError(405, "MethodNotAllowed", f"this fake does not implement {method} here")
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, chunks) -> None:
        try:
            first = next(chunks, None)
        except ApiError as exc:
            self._json(exc.code, exc.body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in [first] if first is not None else []:
                self._chunk(chunk)
            for chunk in chunks:
                self._chunk(chunk)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
