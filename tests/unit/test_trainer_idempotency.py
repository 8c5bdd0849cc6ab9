"""AIP-155: a reused idempotency key returns the job it made only for the same request."""

from __future__ import annotations

import pytest

from services.common.errors import AlreadyExists
from services.common.stubs import trainer_pb2
from services.trainer.service import TrainerServicer


def _job(spec: trainer_pb2.JobSpec) -> trainer_pb2.Job:
    return trainer_pb2.Job(id="job-1", spec=spec, idempotency_key="k")


def _request(spec: trainer_pb2.JobSpec) -> trainer_pb2.CreateJobRequest:
    return trainer_pb2.CreateJobRequest(spec=spec, idempotency_key="k")


def _training(output: str = "sql-lora", dataset: str = "shop-sql") -> trainer_pb2.JobSpec:
    return trainer_pb2.JobSpec(
        training=trainer_pb2.TrainingSpec(
            base_model="smollm2", dataset=dataset, output_name=output
        )
    )


def _export(output: str = "sql-merged", adapter: str = "sql-lora@1") -> trainer_pb2.JobSpec:
    return trainer_pb2.JobSpec(
        export=trainer_pb2.ExportSpec(adapter=adapter, output_name=output)
    )


# The stored job's spec holds pinned references (`shop-sql@3`); the request may name the latest.
SAME = [
    (_training(dataset="shop-sql@3"), _training()),
    (_export(adapter="sql-lora@1"), _export(adapter="sql-lora")),
]
DIFFERENT = [
    (_training(dataset="shop-sql@3"), _training(output="other-lora")),
    (_training(dataset="shop-sql@3"), _training(dataset="other-data")),
    (_export(), _export(output="other-merged")),
    (_export(), _export(adapter="other-lora@1")),
    (_training(), _export()),
    (_export(), _training()),
]


@pytest.mark.parametrize(("stored", "given"), SAME)
def test_the_same_request_gets_the_stored_job(stored, given):
    servicer = TrainerServicer.__new__(TrainerServicer)  # the check reads no service state
    job = _job(stored)
    assert servicer._same_request(job, _request(given)) is job


@pytest.mark.parametrize(("stored", "given"), DIFFERENT)
def test_another_request_under_the_key_is_refused(stored, given):
    servicer = TrainerServicer.__new__(TrainerServicer)
    with pytest.raises(AlreadyExists) as info:
        servicer._same_request(_job(stored), _request(given))
    assert info.value.code == "idempotency_key_reused"
    assert info.value.param == "idempotency_key"
