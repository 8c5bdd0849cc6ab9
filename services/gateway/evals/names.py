"""OpenAI eval ids <-> tuneplex names, stateless like the fine-tuning ones (fine_tuning/names.py).

- Eval `eval_<24 hex>` is the registry eval definition of that very name (its latest version
  after an update).
- Run `evalrun_<x>` is the trainer's eval job `job-<x>`. The items it scores are the registry
  dataset `evalset-<r>` (OpenAI's rows rendered through the run's input templates) and its
  record is the EVALUATION `evalrun-<r>`; `<r>` is drawn by the gateway before the job exists
  and kept in the job's labels.
- Output item `outputitem_<x>_<n>` is the run's item `n` (0-based, the row's order).
- Testing criterion `i` of an eval grades as the tuneplex grader `criterion-<i>`: OpenAI's
  names are free text, tuneplex's are identifiers; the eval keeps the names it was given.
"""

from __future__ import annotations

import re
import secrets

EVAL_ID_LABEL = "openai.eval_id"
RUN_NAME_LABEL = "openai.run_name"
RUN_DATA_LABEL = "openai.run_data"
DATA_SOURCE_LABEL = "openai.data_source"
RUN_MODEL_LABEL = "openai.run_model"

_EVAL_ID = re.compile(r"eval_[0-9a-f]{24}")
_RUN_ID = re.compile(r"evalrun_([0-9a-z]{1,40})")
_ITEM_ID = re.compile(r"outputitem_([0-9a-z]{1,40})_([0-9]{1,9})")
CRITERION_PREFIX = "criterion-"


def new_eval_id() -> str:
    return f"eval_{secrets.token_hex(12)}"


def is_eval_id(value: str) -> bool:
    return bool(_EVAL_ID.fullmatch(value))


def new_run_data() -> str:
    return secrets.token_hex(8)


def eval_set_name(run_data: str) -> str:
    return f"evalset-{run_data}"


def record_name(run_data: str) -> str:
    return f"evalrun-{run_data}"


def run_id(trainer_job_id: str) -> str:
    return "evalrun_" + trainer_job_id.removeprefix("job-")


def trainer_job_id(value: str) -> str | None:
    """The trainer's id of `evalrun_<x>`; None for anything that cannot be one (404)."""
    match = _RUN_ID.fullmatch(value)
    return f"job-{match.group(1)}" if match else None


def output_item_id(trainer_job: str, index: int) -> str:
    return f"outputitem_{trainer_job.removeprefix('job-')}_{index}"


def output_item_index(value: str, trainer_job: str) -> int | None:
    """The item index of `outputitem_<x>_<n>` when it belongs to `trainer_job`, else None."""
    match = _ITEM_ID.fullmatch(value)
    if match is None or f"job-{match.group(1)}" != trainer_job:
        return None
    return int(match.group(2))


def criterion_name(index: int) -> str:
    return f"{CRITERION_PREFIX}{index}"
