"""Wire models of `/v1/evals`, in OpenAI's shapes (as the `openai` SDK parses them). Requests
are strict on their own fields; the union-shaped parts (`data_source_config`, `data_source`,
`testing_criteria`) are checked field by field where they are read, with errors naming them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EvalCreateRequest(_Strict):
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]] = Field(min_length=1, max_length=32)
    name: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None


class EvalUpdateRequest(_Strict):
    name: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None


class RunCreateRequest(_Strict):
    data_source: dict[str, Any]
    name: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None


class EvalObject(BaseModel):
    id: str
    object: Literal["eval"] = "eval"
    created_at: int
    data_source_config: dict[str, Any]
    metadata: dict[str, str] | None = None
    name: str
    testing_criteria: list[dict[str, Any]]


class EvalList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvalObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


class ResultCounts(BaseModel):
    total: int = 0
    errored: int = 0
    failed: int = 0
    passed: int = 0


class CriterionResult(BaseModel):
    testing_criteria: str
    passed: int
    failed: int


class RunError(BaseModel):
    code: str
    message: str


class RunObject(BaseModel):
    id: str
    object: Literal["eval.run"] = "eval.run"
    created_at: int
    data_source: dict[str, Any]
    error: RunError | None = None
    eval_id: str
    metadata: dict[str, str] | None = None
    model: str
    name: str
    per_model_usage: list[dict[str, Any]] = Field(default_factory=list)
    per_testing_criteria_results: list[CriterionResult] = Field(default_factory=list)
    report_url: str = ""
    result_counts: ResultCounts = Field(default_factory=ResultCounts)
    status: Literal["queued", "in_progress", "completed", "canceled", "failed"]
    # tuneplex's record of the run in the registry (`evalrun-<r>@1`), once it has completed.
    evaluation: str | None = None


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class OutputItem(BaseModel):
    id: str
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    created_at: int
    datasource_item: dict[str, Any]
    datasource_item_id: int
    eval_id: str
    results: list[dict[str, Any]]
    run_id: str
    sample: dict[str, Any]
    status: Literal["pass", "fail"]


class OutputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OutputItem]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
