"""The one module of OpenAI id/name <-> tuneplex name mappings of the fine-tuning API. Stateless:
every mapping is a function of the name itself, so the gateway keeps no table of its own.

- File `file-<24 hex>` is the registry dataset of that very name, version 1.
- Job `ftjob-<x>` is the trainer's job `job-<x>`.
- A job's output adapter is `ft-<o>` in the registry and `ft:<base>:<owner>:<suffix>:<o>` as
  an OpenAI model. `<o>` is an output id the gateway draws at CreateJob: the trainer draws the
  job id itself, after the output name is fixed, so `<o>` is not the job's `<x>`; the job
  carries its full `ft:` name in the label `openai.fine_tuned_model`.
- Its checkpoint at step N is the adapter `ft-<o>-step-<N>`, named
  `ft:<base>:<owner>:<suffix>:<o>:ckpt-step-<N>`, with the id `ftckpt-<x>-<N>`.
- Event `ftevent-<x>-<sequence>`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from services.common.training_spec import checkpoint_adapter_name

OWNER_LABEL = "tuneplex.owner"
PURPOSE_LABEL = "openai.purpose"
FILENAME_LABEL = "openai.filename"
MODEL_LABEL = "openai.model"
SUFFIX_LABEL = "openai.suffix"
TRAINING_FILE_LABEL = "openai.training_file"
VALIDATION_FILE_LABEL = "openai.validation_file"
METADATA_LABEL = "openai.metadata"
SEED_LABEL = "openai.seed"
FINE_TUNED_MODEL_LABEL = "openai.fine_tuned_model"
HYPERPARAMETERS_LABEL = "openai.hyperparameters"
METHOD_LABEL = "openai.method"
CHECKPOINT_STEP_LABEL = "tuneplex.checkpoint_step"

FILE_VERSION = 1
FT_PREFIX = "ft:"
_FILE_ID = re.compile(r"file-[0-9a-f]{24}")
_JOB_TAIL = re.compile(r"[0-9a-z]{1,40}")
_CKPT = re.compile(r"ckpt-step-([1-9][0-9]{0,18})")
_EVENT_ID = re.compile(r"ftevent-([0-9a-z]{1,40})-([0-9]{1,18})")


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def is_file_id(value: str) -> bool:
    return bool(_FILE_ID.fullmatch(value))


def file_dataset_ref(file_id: str) -> str:
    return f"{file_id}@{FILE_VERSION}"


def new_output_id() -> str:
    return secrets.token_hex(6)


def job_id(trainer_job_id: str) -> str:
    return "ft" + trainer_job_id if trainer_job_id.startswith("job-") else trainer_job_id


def trainer_job_id(fine_tuning_job_id: str) -> str | None:
    """The trainer's id of `ftjob-<x>`; None for anything that cannot be one (unknown: 404)."""
    tail = fine_tuning_job_id.removeprefix("ftjob-")
    if tail == fine_tuning_job_id or not _JOB_TAIL.fullmatch(tail):
        return None
    return f"job-{tail}"


def job_tail(trainer_or_ft_job_id: str) -> str:
    return trainer_or_ft_job_id.rpartition("job-")[2]


def output_adapter(output_id: str) -> str:
    return f"ft-{output_id}"


def fine_tuned_model(base: str, owner: str, suffix: str, output_id: str) -> str:
    return f"{FT_PREFIX}{base}:{owner}:{suffix}:{output_id}"


def checkpoint_model(fine_tuned: str, step: int) -> str:
    return f"{fine_tuned}:ckpt-step-{step}"


def checkpoint_id(trainer_job: str, step: int) -> str:
    return f"ftckpt-{job_tail(trainer_job)}-{step}"


def event_id(trainer_job: str, sequence: int) -> str:
    return f"ftevent-{job_tail(trainer_job)}-{sequence}"


def event_sequence(value: str) -> int | None:
    """The sequence number of an event id (`ftevent-<x>-<n>`), None when it is not one."""
    match = _EVENT_ID.fullmatch(value)
    return int(match.group(2)) if match else None


@dataclass(frozen=True)
class FineTunedName:
    """A parsed `ft:<base>:<owner>:<suffix>:<o>[:ckpt-step-<N>]`."""

    base: str
    owner: str
    suffix: str
    output_id: str
    step: int | None = None

    @property
    def adapter(self) -> str:
        """The registry adapter it names."""
        name = output_adapter(self.output_id)
        return name if self.step is None else checkpoint_adapter_name(name, self.step)


def parse_fine_tuned(model: str) -> FineTunedName | None:
    """`model` as a fine-tuned model name, or None when it is not a well-formed one."""
    if not model.startswith(FT_PREFIX):
        return None
    parts = model[len(FT_PREFIX) :].split(":")
    step = None
    if len(parts) == 5:
        match = _CKPT.fullmatch(parts.pop())
        if match is None:
            return None
        step = int(match.group(1))
    if len(parts) != 4:
        return None
    base, owner, suffix, output_id = parts
    if not base or not owner or not _JOB_TAIL.fullmatch(output_id):
        return None
    return FineTunedName(base, owner, suffix, output_id, step)


def is_fine_tuned(model: str) -> bool:
    return model.startswith(FT_PREFIX)
