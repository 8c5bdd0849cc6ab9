"""The trainer's job states as OpenAI's fine-tuning job statuses."""

from __future__ import annotations

from services.common.stubs import trainer_pb2

STATUS: dict[int, str] = {
    trainer_pb2.JOB_STATE_QUEUED: "queued",
    trainer_pb2.JOB_STATE_VALIDATING: "validating_files",
    trainer_pb2.JOB_STATE_RUNNING: "running",
    trainer_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    trainer_pb2.JOB_STATE_FAILED: "failed",
    trainer_pb2.JOB_STATE_CANCELLED: "cancelled",
    trainer_pb2.JOB_STATE_PAUSED: "paused",
}
FINAL = frozenset({"succeeded", "failed", "cancelled"})


def status_of(state: int) -> str:
    # UNSPECIFIED only on a job the trainer has not stored yet: it is about to be queued.
    return STATUS.get(state, "queued")
