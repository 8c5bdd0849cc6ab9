"""`/v1/fine_tuning/alpha/graders/run` and `/validate` on the real gateway app (its auth, its
error handlers, its mounting): the evaluation room's graders on one sample, in OpenAI's shapes.
A `score_model` judge answers through the real serving path, vLLM's generation route being the
`httpx.MockTransport` of test_gateway_relay; the openai SDK talks to a uvicorn-served app."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient

from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings
from tests.unit.test_gateway_relay import BASE, USAGE, Gateway

AUTH = {"authorization": "Bearer k"}
RUN = "/v1/fine_tuning/alpha/graders/run"
VALIDATE = "/v1/fine_tuning/alpha/graders/validate"
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
FUZZY = {
    "type": "text_similarity",
    "name": "fuzzy",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.5,
}
JUDGE = {
    "type": "score_model",
    "name": "judge",
    "model": BASE.name,
    "input": [{"role": "user", "content": "Rate {{sample.output_text}} against {{item.answer}}"}],
    "range": [0, 10],
}


@pytest.fixture
def http(tmp_path) -> TestClient:
    # No `with`: the lifespan (registry, engines) does not run; these graders need neither.
    return TestClient(build_app(GatewaySettings(home=tmp_path, api_key="k")))


def run(http: TestClient, grader: dict[str, Any], sample: str, **item: Any) -> dict[str, Any]:
    resp = http.post(
        RUN, json={"grader": grader, "model_sample": sample, "item": item}, headers=AUTH
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def raised_flags(body: dict[str, Any]) -> set[str]:
    return {k for k, v in body["metadata"]["errors"].items() if v is True}


def test_string_check_rewards_a_match_1_and_a_mismatch_0(http):
    hit = run(http, EXACT, "Paris", answer="Paris")
    miss = run(http, EXACT, "paris", answer="Paris")
    assert (hit["reward"], miss["reward"]) == (1.0, 0.0)
    assert hit["metadata"]["name"] == "exact" and hit["metadata"]["type"] == "string_check"
    assert (hit["metadata"]["passed"], miss["metadata"]["passed"]) == (True, False)
    assert raised_flags(hit) == raised_flags(miss) == set()
    assert hit["sub_rewards"] == {} and hit["model_grader_token_usage_per_model"] == {}
    ilike = {**EXACT, "operation": "ilike"}
    assert run(http, ilike, "It is PARIS.", answer="paris")["reward"] == 1.0


def test_text_similarity_scores_the_fuzzy_ratio(http):
    assert run(http, FUZZY, "kitten", answer="kitten")["reward"] == 1.0
    # Indel ratio: the longest common subsequence "ittn" leaves 5 edits over 13 characters.
    body = run(http, FUZZY, "kitten", answer="sitting")
    assert body["reward"] == pytest.approx(8 / 13)
    assert body["metadata"]["passed"] is True


def test_text_similarity_as_openais_grader_type_has_it_without_a_threshold(http):
    """OpenAI's grader API type of text_similarity has no pass_threshold: the SDK-typed grader
    runs, its reward is the score, and it passes only at 1.0."""
    grader = {k: v for k, v in FUZZY.items() if k != "pass_threshold"}
    body = run(http, grader, "kitten", answer="sitting")
    assert body["reward"] == pytest.approx(8 / 13) and body["metadata"]["passed"] is False
    inside = {"type": "multi", "name": "m", "graders": {"f": grader}, "calculate_output": "f"}
    assert run(http, inside, "kitten", answer="kitten")["reward"] == 1.0


def test_a_field_the_item_lacks_is_the_samples_invalid_variable_error(http):
    body = run(http, EXACT, "Paris", question="Capital of France?")
    assert body["reward"] == 0.0
    assert raised_flags(body) == {"invalid_variable_error"}
    assert "item.answer" in body["metadata"]["error_detail"]


def test_multi_reports_each_part_as_a_sub_reward(http):
    multi = {
        "type": "multi",
        "name": "both",
        "graders": {"exact": EXACT, "fuzzy": FUZZY},
        "calculate_output": "0.5 * exact + 0.5 * fuzzy",
    }
    body = run(http, multi, "kitten", answer="sitting")
    assert body["sub_rewards"] == {"exact": 0.0, "fuzzy": pytest.approx(8 / 13)}
    assert body["reward"] == pytest.approx(4 / 13)
    assert body["metadata"]["type"] == "multi"


@pytest.mark.parametrize(
    "grader, param, words",
    [
        ({**EXACT, "operation": "equals"}, "grader.operation", "operation"),
        ({**EXACT, "refrence": "x"}, "grader.refrence", "unknown key 'refrence'"),
        (
            {**EXACT, "type": "python", "source": "def grade(s, i): return 1"},
            "grader.type",
            "unknown grader type 'python'",
        ),
        ({**FUZZY, "evaluation_metric": "cosine"}, "grader.evaluation_metric", "cosine"),
        ({**EXACT, "input": "{{output}}"}, "grader.input", "unknown namespace"),
        (
            {
                "type": "multi",
                "name": "m",
                "graders": {"a": {**EXACT, "operation": 1}},
                "calculate_output": "a",
            },
            "grader.graders.a.operation",
            "operation",
        ),
    ],
)
def test_a_bad_grader_is_400_naming_the_field(http, grader, param, words):
    for route, body in (
        (VALIDATE, {"grader": grader}),
        (RUN, {"grader": grader, "model_sample": "x"}),
    ):
        resp = http.post(route, json=body, headers=AUTH)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert words in error["message"] and error["message"].startswith(param)
        assert "[0]" not in error["message"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"grader": EXACT}, "model_sample"),
        ({"grader": EXACT, "model_sample": "x", "itme": {"answer": "x"}}, "itme"),
        ({"grader": EXACT, "model_sample": 3}, "model_sample"),
        ({"grader": "string_check", "model_sample": "x"}, "grader"),
    ],
)
def test_a_bad_request_body_is_400_naming_the_field(http, body, param):
    resp = http.post(RUN, json=body, headers=AUTH)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_sql_execution_is_refused_with_where_it_runs(http):
    sql = {
        "type": "sql_execution",
        "name": "sql",
        "input": "{{sample.output_text}}",
        "reference": "{{item.sql}}",
        "database": "shop-db",
    }
    resp = http.post(RUN, json={"grader": sql, "model_sample": "SELECT 1"}, headers=AUTH)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == ("grader.type", "grader_not_supported")
    assert "eval job" in error["message"]


def test_validate_echoes_the_grader_as_it_will_run(http):
    resp = http.post(VALIDATE, json={"grader": JUDGE}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    grader = resp.json()["grader"]
    assert {k: grader[k] for k in JUDGE} == {**JUDGE, "range": [0.0, 10.0]}
    # The defaults an eval records are filled in.
    assert grader["sampling_params"]["temperature"] == 0.0
    assert grader["pass_threshold"] is None


def test_the_routes_need_the_api_key(http):
    for route in (RUN, VALIDATE):
        resp = http.post(route, json={"grader": EXACT, "model_sample": "x"})
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "authentication_error"


def judge_says(reply: str):
    def answer(body: dict[str, Any]) -> httpx.Response:
        message = {"role": "assistant", "content": reply}
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                "usage": USAGE,
            },
        )

    return answer


async def test_score_model_asks_its_judge_through_the_serving_path(tmp_path):
    gw = Gateway(tmp_path, judge_says('{"score": 8}'))
    try:
        body = {"grader": JUDGE, "model_sample": "Paris", "item": {"answer": "Paris"}}
        resp = await gw.http.post(RUN, json=body)
    finally:
        await gw.aclose()
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["reward"] == pytest.approx(0.8)
    # The judge got the rendered messages and the grader's sampling.
    (sent,) = gw.sent
    assert sent["messages"] == [{"role": "user", "content": "Rate Paris against Paris"}]
    assert (sent["temperature"], sent["max_tokens"]) == (0.0, 256)
    assert result["metadata"]["sampled_model_name"] == BASE.name
    expected_usage = {**USAGE, "cached_tokens": 0}
    assert result["model_grader_token_usage_per_model"] == {BASE.name: expected_usage}
    assert result["metadata"]["token_usage"] == expected_usage


async def test_a_judge_reply_without_a_number_is_a_parse_error(tmp_path):
    gw = Gateway(tmp_path, judge_says("I cannot rate that."))
    try:
        resp = await gw.http.post(
            RUN, json={"grader": JUDGE, "model_sample": "x", "item": {"answer": "y"}}
        )
    finally:
        await gw.aclose()
    assert resp.status_code == 200, resp.text
    assert resp.json()["reward"] == 0.0
    assert raised_flags(resp.json()) == {"model_grader_parse_error"}


async def test_a_judge_model_nobody_serves_is_404_naming_the_field(tmp_path):
    gw = Gateway(tmp_path)
    multi = {
        "type": "multi",
        "name": "m",
        "calculate_output": "j",
        "graders": {"j": {**JUDGE, "model": "no-such-model"}},
    }
    try:
        resp = await gw.http.post(RUN, json={"grader": multi, "model_sample": "x"})
    finally:
        await gw.aclose()
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["param"] == "grader.graders.j.model"
    assert gw.sent == []


@pytest.fixture
def served(tmp_path) -> Iterator[str]:
    """The gateway app on a loopback port (no lifespan: these graders need no engine)."""
    app = build_app(GatewaySettings(home=tmp_path, api_key="k"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(10)


def test_the_openai_sdk_runs_and_validates_graders(served):
    client = openai.OpenAI(base_url=served, api_key="k", max_retries=0)
    graders = client.fine_tuning.alpha.graders
    # Our grader dicts as the SDK's TypedDicts (text_similarity's pass_threshold is not in them).
    hit = graders.run(grader=cast(Any, FUZZY), model_sample="kitten", item={"answer": "sitting"})
    assert hit.reward == pytest.approx(8 / 13)
    assert hit.metadata.name == "fuzzy" and hit.metadata.errors.invalid_variable_error is False
    checked = graders.validate(grader=cast(Any, EXACT))
    assert checked.grader is not None and checked.grader.type == "string_check"
    with pytest.raises(openai.BadRequestError) as refused:
        graders.validate(grader=cast(Any, {**EXACT, "operation": "equals"}))
    assert refused.value.param == "grader.operation"


def test_requests_are_counted_by_their_route_template(http):
    """The grader and fine-tuning routes are counted under their own route, not as `other`,
    and an id in the path does not become a label value."""
    from services.gateway import metrics

    def count(route: str, status: str) -> float:
        return metrics.REQUESTS.labels(route=route, status=status)._value.get()

    before = count(VALIDATE, "200"), count("other", "404")
    http.post(VALIDATE, json={"grader": EXACT}, headers=AUTH)
    http.get("/v1/no-such-route", headers=AUTH)
    assert count(VALIDATE, "200") == before[0] + 1
    assert count("other", "404") == before[1] + 1
