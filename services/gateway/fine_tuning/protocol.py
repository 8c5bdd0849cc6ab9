"""Wire models of the files and fine-tuning routes, in OpenAI's shapes (as the `openai` SDK
parses them). Requests are strict, as OpenAI is: an unknown field is a 400 naming it, and
`"n_epochs": "3"` is not a number."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# OpenAI's limits on metadata and on a model-name suffix.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
SUFFIX_PATTERN = r"^[a-z0-9_-]{0,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Auto = Literal["auto"]


def _auto_or(kind: type, low: float, high: float, *, low_open: bool = False) -> AfterValidator:
    """A hyper-parameter: `"auto"` or a number of `kind` in OpenAI's range, with one message
    that says so (a plain union would report each of its branches)."""
    shape = "an integer" if kind is int else "a number"
    bound = f"above {low:g}" if low_open else f"from {low:g}"
    rule = f"must be 'auto' or {shape} {bound} to {high:g}"

    def check(value: Any) -> Any:
        if value is None or value == "auto":
            return value
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (kind is int and not isinstance(value, int)):
            raise ValueError(rule)
        if value > high or value < low or (low_open and value == low):
            raise ValueError(f"{rule}, got {value!r}")
        return value

    return AfterValidator(check)


class SupervisedHyperparameters(_Strict):
    model_config = ConfigDict(extra="forbid", strict=False)

    batch_size: Annotated[Any, _auto_or(int, 1, 256)] = None
    learning_rate_multiplier: Annotated[Any, _auto_or(float, 0, 10, low_open=True)] = None
    n_epochs: Annotated[Any, _auto_or(int, 1, 50)] = None


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Annotated[Any, _auto_or(float, 0, 2, low_open=True)] = None


class SupervisedMethod(_Strict):
    hyperparameters: SupervisedHyperparameters | None = None


class DpoMethod(_Strict):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class JobCreateRequest(_Strict):
    model: str = Field(min_length=1, max_length=256, examples=["smollm2-135m-instruct"])
    training_file: str = Field(min_length=1, max_length=256)
    validation_file: str | None = Field(None, max_length=256)
    suffix: str | None = Field(None, pattern=SUFFIX_PATTERN)
    seed: int | None = Field(None, ge=0, lt=2**32)
    metadata: dict[str, str] | None = None
    hyperparameters: SupervisedHyperparameters | None = None
    method: Method | None = None
    integrations: list[dict[str, Any]] | None = None
    tuneplex: dict[str, Any] | None = Field(
        None,
        description="tuneplex training settings (TrainingConfig names: `method`, `lora_r`, "
        "`max_steps`, `save_steps`, ...), sent with the SDK's `extra_body`.",
    )


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool = False


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class JobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool = False


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class JobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobCheckpoint]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
