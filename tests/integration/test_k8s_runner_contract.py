"""Contract test of the trainer's Kubernetes runner against a fake of an outside system: the
Kubernetes API (`tests/helpers/fake_kubernetes_api.py`, a real HTTP server on loopback). The real
`kubernetes` Python client, configured by the runner from a kubeconfig, talks to it; the real
JobSupervisor and JobStore drive the runner, with the settings the k8s base renders (checkpoint
claim, image, service account) and the shipped Role.

It validates every request: each Job body strictly against both pinned Kubernetes schema sets and
restricted Pod Security, its name and namespace, the bearer token, the Role's verbs and
resources, and only the routes and parameters the runner should use. It drives create, event
following through the pod's log (lines cut mid-way by the stream), a crash and a resume whose
second attempt mounts the same checkpoint claim, a cancel while running and while Pending, and a
restarted trainer that must retire the Job its predecessor left running.

What it cannot prove: a real API server's admission and defaulting, scheduling, volumes (that the
claim really is ReadWriteMany and mounted on another node), image pulls, GPUs, log rotation.
docs/kubernetes.md says what has run on a real cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.common.k8s_schema import load_manifests
from services.common.stubs import trainer_pb2
from services.trainer.main import build_runner
from services.trainer.runners.kubernetes import KubernetesRunner
from services.trainer.settings import TrainerSettings
from services.trainer.spec import TrainingConfig
from services.trainer.store import JobStore
from services.trainer.supervisor import JobSupervisor
from services.trainer.worker.protocol import ATTEMPT_ENV, CHECKPOINTS_DIR, EVENT_PREFIX, LOG_FILE
from tests.helpers.fake_kubernetes_api import FakeKubernetesAPI, PodScript

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOKEN = "trainer-sa-token"
USER = "system:serviceaccount:tuneplex:tuneplex-trainer"
JOB_ID = "job-0123456789ab"


def event(kind: str, **fields) -> str:
    return EVENT_PREFIX + json.dumps({"type": kind, **fields})


@pytest.fixture(scope="module")
def base() -> list[dict]:
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "kubectl"), "kustomize", str(REPO / "k8s" / "base")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return load_manifests(out)


@pytest.fixture
def api(base):
    (role,) = [d for d in base if d["kind"] == "Role"]
    with FakeKubernetesAPI(role, namespace="tuneplex", user=USER, token=TOKEN) as fake:
        yield fake


def trainer_config(base: list[dict]) -> dict[str, str]:
    """The trainer's environment as the k8s base renders it."""
    (config,) = [
        d
        for d in base
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("tuneplex-trainer-")
    ]
    return config["data"]


@pytest.fixture
def settings(base, api, tmp_path, monkeypatch) -> TrainerSettings:
    """The trainer's settings as the k8s base configures them, pointed at the fake API; the
    claim the trainer mounts is a folder here."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
                "users": [{"name": "trainer", "user": {"token": TOKEN}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "trainer"}}],
                "current-context": "fake",
            }
        )
    )
    for name in list(os.environ):
        if name.startswith("TUNEPLEX_") or name.startswith("KUBERNETES_SERVICE"):
            monkeypatch.delenv(name)
    for key, value in trainer_config(base).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TUNEPLEX_TRAINER_K8S_CHECKPOINT_MOUNT", str(tmp_path / "claim"))
    monkeypatch.setenv("TUNEPLEX_TRAINER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNEPLEX_TRAINER_HOST", "127.0.0.1")  # the service itself is not started
    monkeypatch.setenv("TUNEPLEX_TRAINER_K8S_IMAGE", "ghcr.io/tuneplex/trainer:0.1.0")
    monkeypatch.setenv("TUNEPLEX_TRAINER_K8S_KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("TUNEPLEX_TRAINER_CANCEL_GRACE_SECONDS", "1")
    return TrainerSettings()


def supervisor_for(settings: TrainerSettings) -> tuple[JobStore, JobSupervisor]:
    work = settings.work_dir
    work.mkdir(parents=True, exist_ok=True)
    store = JobStore(work / "jobs.sqlite")
    config = TrainingConfig(base_model="m@1", dataset="d@1", output_name="o")
    store.create(
        trainer_pb2.Job(id="job-0123456789ab", state=trainer_pb2.JOB_STATE_QUEUED),
        config.model_dump_json(),
    )
    supervisor = JobSupervisor(
        store,
        build_runner(settings, store),
        work_dir=work,
        registry_target=settings.registry_target,
        max_attempts=settings.max_attempts,
        cancel_grace_seconds=settings.cancel_grace_seconds,
    )
    return store, supervisor


def volumes_by_mount(job: dict) -> dict[str, dict]:
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in pod["containers"][0]["volumeMounts"]}


async def until(condition, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_crashed_attempt_resumes_on_the_same_claim_and_publishes(api, settings):
    api.scripts = [
        PodScript(
            lines=[
                event("state", state="RUNNING", message="training"),
                "a plain log line with a wide character: \u00e9\u6f22",
                event("progress", step=2, total_steps=4, loss=1.5),
                event("checkpoint", step=2, size_bytes=1234),
            ],
            exit_code=137,  # the node died, or the OOM killer
        ),
        PodScript(
            lines=[
                event("progress", step=4, total_steps=4, loss=0.9),
                event("result", metrics={"train_loss": 0.9}),
                event("published", output="o@1"),
            ],
            exit_code=0,
        ),
    ]
    store, supervisor = supervisor_for(settings)
    await asyncio.wait_for(supervisor.run("job-0123456789ab"), 60)

    job = store.get("job-0123456789ab")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job
    assert (job.attempt, job.output, job.progress.step) == (2, "o@1", 4)
    kinds = [e.WhichOneof("kind") for e in store.events(job.id)]
    # Every event line arrived whole although the stream cut each one in two.
    assert kinds.count("progress") == 2 and kinds.count("checkpoint_saved") == 1
    assert (
        "a plain log line with a wide character: \u00e9\u6f22"
        in (supervisor.job_dir(job.id) / LOG_FILE).read_text()
    )

    first, second = api.created
    assert first["metadata"]["name"] != second["metadata"]["name"]
    envs = [
        {e["name"]: e.get("value") for e in j["spec"]["template"]["spec"]["containers"][0]["env"]}
        for j in (first, second)
    ]
    assert [env[ATTEMPT_ENV] for env in envs] == ["1", "2"]
    # The second attempt reads the first one's checkpoints: same claim, same job folder.
    work = [volumes_by_mount(j)["/var/lib/tuneplex"] for j in (first, second)]
    assert (
        work[0]
        == work[1]
        == {
            "name": "work",
            "persistentVolumeClaim": {"claimName": settings.k8s_checkpoint_claim},
        }
    )
    commands = [j["spec"]["template"]["spec"]["containers"][0]["command"] for j in api.created]
    assert commands[0] == commands[1]
    # The first attempt's Job is retired before the second is created.
    creates = [i for i, call in enumerate(api.calls) if call == "create jobs"]
    assert api.calls.index(f"delete jobs/{first['metadata']['name']}") < creates[1]


def commit_on_claim(claim: Path, step: int, *, marked: bool = True) -> None:
    """What a Job pod leaves on the claim: its job folder's checkpoint of ``step``."""
    folder = claim / "jobs" / JOB_ID / CHECKPOINTS_DIR / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    if marked:
        (folder / "COMPLETE").write_text(folder.name)


async def test_a_retried_attempt_resumes_from_the_newest_checkpoint_on_the_claim(
    api, settings, base
):
    # The trainer mounts the Jobs' claim where its setting says, beside its own volume.
    env = trainer_config(base)
    (trainer,) = [
        d for d in base if d["kind"] == "Deployment" and "trainer" in d["metadata"]["name"]
    ]
    mounted = volumes_by_mount(trainer)[env["TUNEPLEX_TRAINER_K8S_CHECKPOINT_MOUNT"]]
    assert (
        mounted["persistentVolumeClaim"]["claimName"]
        == env["TUNEPLEX_TRAINER_K8S_CHECKPOINT_CLAIM"]
    )

    # The pod committed step 4 and died before its event got out, and was killed while
    # committing step 6: the next attempt resumes from 4, so the service must say 4.
    claim = settings.k8s_checkpoint_mount
    assert claim is not None
    for step in (2, 4):
        commit_on_claim(claim, step)
    commit_on_claim(claim, 6, marked=False)
    api.scripts = [
        PodScript(
            lines=[
                event("progress", step=2, total_steps=8, loss=1.5),
                event("checkpoint", step=2, size_bytes=1234),
            ],
            exit_code=137,
        ),
        PodScript(lines=[event("published", output="o@1")], exit_code=0),
    ]
    store, supervisor = supervisor_for(settings)
    await asyncio.wait_for(supervisor.run(JOB_ID), 60)
    assert store.get(JOB_ID).state == trainer_pb2.JOB_STATE_SUCCEEDED
    logs = [e.log.message for e in store.events(JOB_ID) if e.WhichOneof("kind") == "log"]
    assert (
        "worker attempt 1 ended with exit code 137; resuming from the checkpoint at step 4" in logs
    )


def test_without_a_claim_nothing_outlives_a_pod_and_an_unmounted_claim_is_not_guessed(
    settings, tmp_path
):
    job_dir = tmp_path / "service-job-folder"
    emptydir = settings.model_copy(update={"k8s_checkpoint_claim": None})
    assert KubernetesRunner(emptydir, memory_bytes_for=len).checkpoints(JOB_ID, job_dir) == []
    unmounted = settings.model_copy(update={"k8s_checkpoint_mount": None})
    assert KubernetesRunner(unmounted, memory_bytes_for=len).checkpoints(JOB_ID, job_dir) is None


async def test_cancel_of_a_running_job_deletes_its_job_and_ends_cancelled(api, settings):
    api.scripts = [PodScript(lines=[event("state", state="RUNNING", message="go")], exit_code=None)]
    store, supervisor = supervisor_for(settings)
    run = asyncio.create_task(supervisor.run("job-0123456789ab"))
    await until(lambda: store.get("job-0123456789ab").state == trainer_pb2.JOB_STATE_RUNNING)
    await supervisor.cancel("job-0123456789ab")
    await asyncio.wait_for(run, 30)
    assert store.get("job-0123456789ab").state == trainer_pb2.JOB_STATE_CANCELLED
    (name,) = [j["metadata"]["name"] for j in api.created]
    assert f"delete jobs/{name}" in api.calls and api.jobs == {}


async def test_cancel_while_the_pod_is_pending_ends_cancelled(api, settings):
    api.scripts = [PodScript(unschedulable=True)]
    store, supervisor = supervisor_for(settings)
    run = asyncio.create_task(supervisor.run("job-0123456789ab"))
    logs = lambda: [  # noqa: E731
        e.log.message for e in store.events("job-0123456789ab") if e.WhichOneof("kind") == "log"
    ]
    # The user sees why nothing happens.
    await until(lambda: any("Insufficient nvidia.com/gpu" in m for m in logs()))
    await supervisor.cancel("job-0123456789ab")
    await asyncio.wait_for(run, 30)
    assert store.get("job-0123456789ab").state == trainer_pb2.JOB_STATE_CANCELLED
    assert api.jobs == {}


async def test_a_restarted_trainer_retires_the_job_its_predecessor_left(api, settings):
    """A trainer that crashed leaves its Job running; the next attempt must not run beside it
    (two workers on one job folder)."""
    api.scripts = [PodScript(exit_code=None), PodScript(exit_code=None)]
    _, supervisor = supervisor_for(settings)
    job_dir = supervisor.write_worker_config(
        supervisor.store.get("job-0123456789ab"),
        TrainingConfig(base_model="m@1", dataset="d@1", output_name="o"),
    )
    runner = build_runner(settings, supervisor.store)
    await runner.start("job-0123456789ab", job_dir, 0, 0, attempt=1)
    (orphan,) = api.jobs
    restarted = build_runner(settings, supervisor.store)
    worker = await restarted.start("job-0123456789ab", job_dir, 0, 0, attempt=2)
    assert orphan not in api.jobs, "the earlier attempt's Job still runs"
    assert [p["metadata"]["labels"]["job-name"] for p in api.pods.values()] == [worker.name]
    await worker.stop(1)


def send(api: FakeKubernetesAPI, method: str, path: str, body=None, token=TOKEN):
    """(status, Status object) of a raw request: the client would refuse some bodies itself."""
    request = urllib.request.Request(
        api.url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_the_fake_api_refuses_what_a_real_one_would(api):
    """The fake's checks can fail: what the runner must never send is refused the API's way."""
    jobs = "/apis/batch/v1/namespaces/tuneplex/jobs"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "bad"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "x:1", "comand": ["true"]}],
                }
            }
        },
    }
    code, answer = send(api, "POST", jobs, job)
    assert (code, answer["kind"], answer["reason"]) == (422, "Status", "Invalid")
    assert "comand" in answer["message"]
    del job["spec"]["template"]["spec"]["containers"][0]["comand"]
    code, answer = send(api, "POST", jobs, job)
    assert code == 403 and "PodSecurity" in answer["message"]
    code, answer = send(api, "POST", jobs, job, token="stolen")
    assert code == 401
    code, answer = send(api, "POST", "/apis/batch/v1/namespaces/default/jobs", job)
    assert code == 403 and "cannot create" in answer["message"]
    code, answer = send(api, "PATCH", f"{jobs}/bad", {"spec": {"suspend": True}})
    assert code == 403 and "cannot patch" in answer["message"]  # the Role grants no patch
    code, answer = send(api, "GET", f"{jobs}?watch=true")
    assert code == 400  # the runner polls; a watch would be a change this fake must learn
    code, answer = send(api, "GET", f"{jobs}/missing")
    assert (code, answer["reason"]) == (404, "NotFound")
    code, answer = send(api, "GET", "/api/v1/namespaces/tuneplex/secrets")
    assert code == 404
    assert api.jobs == {}
