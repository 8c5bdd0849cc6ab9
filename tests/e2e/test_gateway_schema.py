"""Property-based run of the gateway's own OpenAPI schema (schemathesis): whatever a client
sends, the answer is never a 5xx. That covers the files and fine-tuning routes too, with a few
examples each: a generated job names no file of this owner, so it is refused before it could
start training."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.e2e.conftest import BASE

pytestmark = pytest.mark.e2e

# Generated prompts are real work for a CPU engine: keep each one to a few tokens.
_MAX_TOKENS = 4
# The routes that generate text get the most examples; every other route a few.
_GENERATING = {"/v1/chat/completions", "/v1/completions"}
_FEW_EXAMPLES = 4


def _keep_generation_short(case) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and body[key] > _MAX_TOKENS:
            body[key] = _MAX_TOKENS
    if "max_tokens" not in body:
        body["max_tokens"] = _MAX_TOKENS
    if isinstance(body.get("n"), int) and body["n"] > 2:
        body["n"] = 2
    # Random model names only ever reach the registry (a 404); send most cases to the engine.
    if isinstance(body.get("model"), str) and len(body["model"]) % 4:
        body["model"] = BASE


def test_no_5xx_for_any_generated_request(gateway):
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    headers = {"authorization": f"Bearer {gateway.api_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        *_GENERATING, "/v1/files", "/v1/files/{file_id}", "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
        "/v1/evals", "/v1/evals/{eval_id}", "/v1/evals/{eval_id}/runs",
        "/v1/evals/{eval_id}/runs/{run_id}/output_items",
    }
    statuses: Counter[int] = Counter()
    no_negatives: list[str] = []
    for operation, mode in itertools.product(operations, GenerationMode):
        get_without_parameters = (operation.method.upper() == "GET"
                                  and not list(operation.iter_parameters()))
        if mode is GenerationMode.NEGATIVE and get_without_parameters:
            continue  # nothing to get wrong in it
        examples = 15 if operation.path in _GENERATING else _FEW_EXAMPLES

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate], database=None)
        def check(case) -> None:
            _keep_generation_short(case)
            response = case.call(base_url=gateway.url, headers=headers, timeout=120)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=[not_a_server_error])

        try:
            check()
        except Unsatisfiable:
            # An operation that takes only a free-form id in its path (pause, resume, cancel)
            # has no invalid request to generate: any string is an id, answered 404.
            if mode is not GenerationMode.NEGATIVE:
                raise
            no_negatives.append(f"{operation.method.upper()} {operation.path}")
    # Not vacuous: generated requests reached the engine, and invalid ones were refused.
    assert statuses[200] >= 5 and statuses[400] >= 5, statuses
    assert not {p.partition(" ")[2] for p in no_negatives} & set(_GENERATING), no_negatives
