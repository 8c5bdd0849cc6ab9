"""`/v1/fine_tuning/alpha/graders/run` and `/validate`: OpenAI's routes for trying a grader on one
sample, over the evaluation room's graders (the same validation, templates and scores an eval
job uses, so a grader tried here grades alike there).

A `score_model` judge is asked through this gateway's own serving path (`ServingJudge`): the
same resolution, engine choice, admission and adapter loading as `/v1/chat/completions`.
`sql_execution` is refused: its database is a registry artifact that only eval jobs fetch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.evaluation.graders import (
    GradeResult,
    GraderResources,
    Sample,
    build_graders,
    validate_graders,
)
from services.evaluation.graders.base import TEMPLATE_FIELD_MISSING, Grader
from services.evaluation.graders.multi import FORMULA_FAILED, MultiGrader
from services.evaluation.graders.score_model import (
    JUDGE_FAILED,
    JUDGE_NO_SCORE,
    JUDGE_OUT_OF_RANGE,
)
from services.evaluation.sampling import SamplingConfig
from services.gateway.protocol import ErrorResponse
from services.gateway.serving import OpenAIServing

PARAM = "grader"
CHAT = "/v1/chat/completions"
# Our grade errors as OpenAI's `metadata.errors` flags; any other error is `other_error`.
_ERROR_FLAGS = {
    TEMPLATE_FIELD_MISSING: "invalid_variable_error",
    FORMULA_FAILED: "formula_parse_error",
    JUDGE_NO_SCORE: "model_grader_parse_error",
    JUDGE_OUT_OF_RANGE: "model_grader_parse_error",
    JUDGE_FAILED: "model_grader_server_error",
}
_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)
_DETAILS = (
    "model_grader_server_error_details",
    "python_grader_runtime_error_details",
    "python_grader_server_error_type",
)

# Mounted under /v1 with the API key by api_router.attach_routers.
router = APIRouter(
    prefix="/fine_tuning/alpha/graders",
    responses={status: {"model": ErrorResponse} for status in (400, 401, 404, 429, 503)},
)


class _Strict(BaseModel):
    # A misspelt `itme` must not grade against an empty item.
    model_config = ConfigDict(extra="forbid", strict=True)


class GraderValidateRequest(_Strict):
    grader: dict[str, Any]


class GraderRunRequest(_Strict):
    grader: dict[str, Any]
    model_sample: str
    item: dict[str, Any] | None = None


class GraderValidateResponse(BaseModel):
    grader: dict[str, Any]


class GraderRunResponse(BaseModel):
    reward: float
    metadata: dict[str, Any]
    sub_rewards: dict[str, float]
    model_grader_token_usage_per_model: dict[str, dict[str, int]]


class ServingJudge:
    """A `score_model` grader's judge over `OpenAIServing`, counting tokens per answering model."""

    def __init__(self, serving: OpenAIServing, raw: Request) -> None:
        self._serving = serving
        self._raw = raw
        self.usage: dict[str, dict[str, int]] = {}
        self.answered_by: str | None = None

    async def complete(
        self, model: str, messages: list[dict[str, str]], sampling: SamplingConfig
    ) -> str:
        body: dict[str, Any] = {"model": model, "messages": messages, **sampling.model_dump()}
        # The caller's owner: a judge is only a model that key may chat with.
        owner = self._raw.state.owner
        response = await self._serving.create(CHAT, CHAT, body, self._raw, owner=owner)
        if response.status_code != 200:  # the client left; nobody reads this grade
            raise Unavailable("the request was closed before the judge answered")
        data = json.loads(bytes(response.body))
        self.answered_by = str(data.get("model") or model)
        self._count(self.answered_by, data.get("usage"))
        choices = data.get("choices") or [{}]
        return str((choices[0].get("message") or {}).get("content") or "")

    def _count(self, model: str, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        total = self.usage.setdefault(
            model,
            {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0},
        )
        details = usage.get("prompt_tokens_details") or {}
        counts = {**usage, "cached_tokens": details.get("cached_tokens")}
        for key in total:
            value = counts.get(key)
            total[key] += value if isinstance(value, int) else 0


def _single(exc: InvalidArgument) -> InvalidArgument:
    """validate_graders' error for `grader[0]...` as the field of this route: `grader...`."""
    indexed = f"{PARAM}[0]"
    param = exc.param or PARAM
    if param.startswith(indexed):
        param = PARAM + param[len(indexed) :]
    message = exc.message.replace(indexed, PARAM, 1)
    return InvalidArgument(message, param=param, code=exc.code)


# OpenAI's grader API type of text_similarity has no pass_threshold (its evals API requires
# one); a trial run reports the score as the reward either way, so a missing one means "pass
# only at 1.0".
TRIAL_PASS_THRESHOLD = 1.0


def _with_trial_threshold(grader: Any) -> Any:
    if not isinstance(grader, dict):
        return grader
    if grader.get("type") == "text_similarity" and "pass_threshold" not in grader:
        return {**grader, "pass_threshold": TRIAL_PASS_THRESHOLD}
    if grader.get("type") == "multi" and isinstance(grader.get("graders"), dict):
        subs = {k: _with_trial_threshold(v) for k, v in grader["graders"].items()}
        return {**grader, "graders": subs}
    return grader


def validated(grader: dict[str, Any]) -> dict[str, Any]:
    """The normalised grader (defaults filled), or a 400 naming the field at fault."""
    try:
        return validate_graders([_with_trial_threshold(grader)], param=PARAM)[0]
    except InvalidArgument as exc:
        raise _single(exc) from None


def _parts(spec: dict[str, Any], param: str = PARAM) -> Iterator[tuple[str, dict[str, Any]]]:
    """The grader and, for `multi`, its sub-graders, each with the field that holds it."""
    yield param, spec
    if spec["type"] == "multi":
        for key, sub in spec["graders"].items():
            yield f"{param}.graders.{key}", sub


async def _check_runnable(spec: dict[str, Any], raw: Request) -> ServingJudge | None:
    """Refuse what one sample here cannot run; the judge a `score_model` needs, once its
    model is known to be served."""
    judge: ServingJudge | None = None
    for param, part in _parts(spec):
        if part["type"] == "sql_execution":
            raise InvalidArgument(
                f"{param}.type: sql_execution graders are not run by /graders/run (their "
                "database is a registry dataset that eval jobs fetch); try it in an eval job",
                param=f"{param}.type",
                code="grader_not_supported",
            )
        if part["type"] == "score_model":
            serving: OpenAIServing = raw.app.state.serving
            try:
                await serving.retrieve_model(part["model"], owner=raw.state.owner)
            except (NotFound, FailedPrecondition) as exc:
                raise NotFound(
                    f"{param}.model: {exc.message}", param=f"{param}.model", code=exc.code
                ) from None
            judge = judge or ServingJudge(serving, raw)
    return judge


def _errors(result: GradeResult) -> dict[str, Any]:
    errors: dict[str, Any] = {flag: False for flag in _FLAGS} | {key: None for key in _DETAILS}
    if result.error is not None:
        flag = _ERROR_FLAGS.get(result.error, "other_error")
        errors[flag] = True
        if flag == "model_grader_server_error":
            errors["model_grader_server_error_details"] = result.detail
    return errors


class _Recorded:
    """A multi grader's part that keeps its result, for `sub_rewards`: the multi grade itself
    keeps only the formula's value, and grading the parts again would ask a judge twice."""

    def __init__(self, grader: Grader) -> None:
        self.grader = grader
        self.name = grader.name
        self.result: GradeResult | None = None

    async def grade(self, item: dict[str, Any], sample: Sample) -> GradeResult:
        self.result = await self.grader.grade(item, sample)
        return self.result

    def check_items(self, items: list[dict[str, Any]]) -> None:
        self.grader.check_items(items)


def _record_parts(grader: Grader) -> dict[str, _Recorded]:
    if not isinstance(grader, MultiGrader):
        return {}
    parts = {key: _Recorded(sub) for key, sub in grader.graders.items()}
    grader.graders.update(parts)
    return parts


@router.post("/validate", response_model=GraderValidateResponse)
async def validate_grader(request: GraderValidateRequest) -> GraderValidateResponse:
    """The grader as it will be run (defaults filled), or a 400 naming the field at fault."""
    return GraderValidateResponse(grader=validated(request.grader))


@router.post("/run", response_model=GraderRunResponse)
async def run_grader(request: GraderRunRequest, raw_request: Request) -> GraderRunResponse:
    """Grade `model_sample` (`{{sample.output_text}}`) against `item` (`{{item.<field>}}`)."""
    spec = validated(request.grader)
    judge = await _check_runnable(spec, raw_request)
    (grader,) = build_graders([spec], GraderResources(judge=judge))
    item, sample = request.item or {}, Sample(output_text=request.model_sample)
    parts = _record_parts(grader)
    start = time.perf_counter()
    result = await grader.grade(item, sample)
    sub_rewards = {key: part.result.score for key, part in parts.items() if part.result}
    usage = judge.usage if judge else {}
    metadata = {
        "name": spec["name"],
        "type": spec["type"],
        "errors": _errors(result),
        "execution_time": time.perf_counter() - start,
        "scores": dict(sub_rewards),
        "token_usage": _total_usage(usage),
        "sampled_model_name": judge.answered_by if judge else None,
        # Ours, beside OpenAI's fields: why an item could not be graded, and pass/fail.
        "passed": result.passed,
        "error_detail": result.detail if result.error else None,
    }
    return GraderRunResponse(
        reward=result.score,
        metadata=metadata,
        sub_rewards=sub_rewards,
        model_grader_token_usage_per_model=usage,
    )


def _total_usage(usage: dict[str, dict[str, int]]) -> dict[str, int] | None:
    if not usage:
        return None
    keys = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")
    return {key: sum(per_model[key] for per_model in usage.values()) for key in keys}
