"""AIP-155: a reused idempotency key returns the job it made for the same request, normalised
(defaults applied), and refuses any other request with ALREADY_EXISTS, making no second job.
Through the real servicer, store, queue and admission; only the registry is stood in for."""

from __future__ import annotations

import pytest

from services.common.errors import AlreadyExists
from services.common.stubs import trainer_pb2
from services.trainer.admission import Admission
from services.trainer.device import DeviceInfo
from services.trainer.queue import JobQueue
from services.trainer.service import TrainerServicer
from services.trainer.store import JobStore
from services.trainer.supervisor import JobSupervisor
from tests.helpers.admission_registry import RegistryAtVersionOne

GIB = 1024**3
CPU = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * GIB, name="cpu")
TWO_GPUS = DeviceInfo(cuda=True, gpu_count=2, memory_bytes=80 * GIB, name="cuda:H100")


class NoRunner:
    async def start(self, *args, **kwargs):
        raise AssertionError("the queue is not started in these tests")


@pytest.fixture
def servicer(tmp_path, request):
    device = getattr(request, "param", CPU)
    store = JobStore(tmp_path / "jobs.sqlite")
    supervisor = JobSupervisor(
        store,
        NoRunner(),
        work_dir=tmp_path,
        registry_target="registry:1",
        max_attempts=1,
        cancel_grace_seconds=1,
    )
    admission = Admission(RegistryAtVersionOne(), device, "local", host_memory_bytes=24 * GIB)
    yield TrainerServicer(store, admission, JobQueue(supervisor.run, 1), supervisor)
    store.close()


def training(**fields) -> trainer_pb2.JobSpec:
    hp = fields.pop("hp", dict(max_steps=30, batch_size=4, max_seq_length=128))
    spec = trainer_pb2.TrainingSpec(
        base_model=fields.pop("base_model", "smollm2-135m-instruct"),
        dataset=fields.pop("dataset", "shop-sql"),
        output_name=fields.pop("output_name", "sql-lora"),
        hyperparameters=trainer_pb2.Hyperparameters(**hp),
        **fields,
    )
    return trainer_pb2.JobSpec(training=spec)


def export(**fields) -> trainer_pb2.JobSpec:
    fields = {"adapter": "sql-lora", "output_name": "sql-merged", **fields}
    return trainer_pb2.JobSpec(export=trainer_pb2.ExportSpec(**fields))


def evaluation(**fields) -> trainer_pb2.JobSpec:
    fields = {"model": "sql-lora", "eval_set": "shop-sql-heldout", **fields}
    grader = trainer_pb2.EvalSpec().graders.add()
    grader.update({"type": "string_check", "name": "exact", "operation": "eq"})
    grader.update({"input": "{{ sample.output_text }}", "reference": "{{ item.reference }}"})
    spec = trainer_pb2.EvalSpec(graders=[grader], **fields)
    return trainer_pb2.JobSpec(evaluation=spec)


async def create(servicer: TrainerServicer, spec: trainer_pb2.JobSpec, key: str = "k"):
    request = trainer_pb2.CreateJobRequest(spec=spec, idempotency_key=key)
    return (await servicer.CreateJob(request, None)).job


# Each pair is one request as first sent and as retried: the same once defaults are applied.
SAME = [
    (training(), training()),
    (training(), training(method=trainer_pb2.METHOD_LORA, lora=trainer_pb2.LoraConfig(r=16))),
    (training(), training(hp=dict(max_steps=30, batch_size=4, max_seq_length=128, seed=42))),
    (export(), export(precision=trainer_pb2.PRECISION_BF16)),
    (evaluation(), evaluation(concurrency=16)),
]
DIFFERENT = [
    (
        training(),
        training(hp=dict(max_steps=30, batch_size=4, max_seq_length=128, learning_rate=1e-3)),
        "learning_rate",
    ),  # fmt: skip
    (training(), training(output_name="other-lora"), "output_name"),
    (training(), training(dataset="shop-sql@2"), "dataset"),
    (training(), training(lora=trainer_pb2.LoraConfig(r=8)), "lora_r"),
    (export(), export(output_name="other-merged"), "output_name"),
    (export(), export(adapter="sql-lora@2"), "adapter"),
    (evaluation(), evaluation(backend=trainer_pb2.EVAL_BACKEND_LOCAL), "backend"),
    (training(), export(), "the kind of job"),
]


@pytest.mark.parametrize(("first", "again"), SAME)
async def test_the_same_normalised_request_gets_the_job_it_made(servicer, first, again):
    job = await create(servicer, first)
    assert (await create(servicer, again)).id == job.id
    assert len(servicer.store.list(0, 50, "")[0]) == 1


@pytest.mark.parametrize(("first", "again", "differs"), DIFFERENT)
async def test_another_request_under_the_key_is_refused_and_makes_no_job(
    servicer, first, again, differs
):
    job = await create(servicer, first)
    with pytest.raises(AlreadyExists) as refused:
        await create(servicer, again)
    assert refused.value.code == "idempotency_key_reused"
    assert refused.value.param == "idempotency_key"
    message = refused.value.message
    assert job.id in message and "different request" in message and differs in message
    assert [j.id for j in servicer.store.list(0, 50, "")[0]] == [job.id]
    assert (await create(servicer, again, key="another-key")).id != job.id  # a new key works


@pytest.mark.parametrize("servicer", [TWO_GPUS], indirect=True)
async def test_num_gpus_left_unset_is_the_same_request_as_the_gpus_it_resolved_to(servicer):
    job = await create(servicer, training())
    assert job.spec.training.num_gpus == 2
    explicit = training(num_gpus=2)
    assert (await create(servicer, explicit)).id == job.id
    with pytest.raises(AlreadyExists, match="num_gpus"):
        await create(servicer, training(num_gpus=0))


# The jobs table as trainers before the normalised request was kept wrote it.
OLD_JOBS_TABLE = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE, state INTEGER NOT NULL,
    create_us INTEGER NOT NULL, cancel_requested INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL, job BLOB NOT NULL
);
"""


async def test_a_job_stored_before_requests_were_kept_is_compared_by_its_stored_spec(tmp_path):
    import sqlite3

    old = sqlite3.connect(tmp_path / "jobs.sqlite")
    old.executescript(OLD_JOBS_TABLE)
    stored = training(base_model="smollm2-135m-instruct@1", dataset="shop-sql@1")
    job = trainer_pb2.Job(id="job-old", spec=stored, idempotency_key="k")
    old.execute(
        "INSERT INTO jobs (id, idempotency_key, state, create_us, config, job) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (job.id, "k", trainer_pb2.JOB_STATE_SUCCEEDED, 1, "{}", job.SerializeToString()),
    )
    old.commit()
    old.close()
    store = JobStore(tmp_path / "jobs.sqlite")  # adds the column; the old row keeps NULL
    supervisor = JobSupervisor(
        store, NoRunner(), work_dir=tmp_path, registry_target="r:1", max_attempts=1,
        cancel_grace_seconds=1,
    )  # fmt: skip
    admission = Admission(RegistryAtVersionOne(), CPU, "local", host_memory_bytes=24 * GIB)
    servicer = TrainerServicer(store, admission, JobQueue(supervisor.run, 1), supervisor)
    assert (await create(servicer, stored)).id == "job-old"
    with pytest.raises(AlreadyExists, match="job-old"):
        await create(servicer, training(base_model="smollm2-135m-instruct@1", dataset="d@1"))
    store.close()
