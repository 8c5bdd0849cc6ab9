"""The eval loop: bounded concurrency, resume from the results file, per-item errors, progress."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.common.eval_summary import RESULTS_FILE, SUMMARY_FILE, EvalSummary, graders_digest
from services.evaluation.graders import GraderResources, build_graders, validate_graders
from services.evaluation.runner import EvalProgress, ItemResult, load_results, run_eval
from services.evaluation.sampling import GatewaySampler, SamplingConfig
from services.evaluation.summary import summarize, write_record

SAMPLING = SamplingConfig(max_tokens=8)
# The answer is graded against the item's "answer" field.
GRADERS = build_graders(
    [
        {
            "type": "string_check",
            "name": "exact",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "eq",
        }
    ],
    GraderResources(),
)


def items(n: int) -> list[dict]:
    return [{"input": f"echo {i}", "answer": str(i)} for i in range(n)]


class EchoSampler:
    """The model under test's stand-in: answers the number in the question; odd ones wrong when
    asked. Counts how many calls are in flight at once."""

    def __init__(self, wrong_odd: bool = False, fail: set[str] = frozenset(), delay: float = 0.01):
        self.wrong_odd, self.fail, self.delay = wrong_odd, fail, delay
        self.in_flight = self.max_in_flight = 0
        self.asked: list[str] = []

    async def sample(self, messages: list[dict[str, str]], sampling: SamplingConfig) -> str:
        assert sampling == SAMPLING
        question = messages[-1]["content"]
        self.asked.append(question)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if question in self.fail:
                raise ConnectionError("gateway went away\nwith a traceback")
            n = int(question.split()[1])
            return str(n + 100) if self.wrong_odd and n % 2 else str(n)
        finally:
            self.in_flight -= 1


async def run(sampler, tmp_path, n=10, *, concurrency=4, attempt=1, progress=None):
    return await run_eval(items(n), sampler, GRADERS, SAMPLING, tmp_path / "results.jsonl",
                          concurrency=concurrency, attempt=attempt,
                          on_progress=(progress if progress is not None else []).append)


async def test_scores_every_item_and_respects_the_concurrency_bound(tmp_path):
    sampler = EchoSampler(wrong_odd=True)
    results = await run(sampler, tmp_path, 10, concurrency=3)
    assert [r.index for r in results] == list(range(10))
    assert [r.score for r in results] == [1.0, 0.0] * 5
    assert results[1].output_text == "101" and results[1].passed == {"exact": False}
    assert results[0].grader_scores == {"exact": 1.0} and results[0].error is None
    assert sampler.max_in_flight == 3  # bounded, and the bound was reached
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == list(range(10))


async def test_concurrency_one_is_sequential_and_zero_is_refused(tmp_path):
    sampler = EchoSampler()
    await run(sampler, tmp_path, 4, concurrency=1)
    assert sampler.max_in_flight == 1
    assert sampler.asked == [f"echo {i}" for i in range(4)]
    with pytest.raises(ValueError, match="concurrency"):
        await run(sampler, tmp_path / "x", 4, concurrency=0)


async def test_resume_skips_finished_items_and_keeps_their_attempt(tmp_path):
    path = tmp_path / "results.jsonl"
    done = [ItemResult(i, str(i), 1.0, {"exact": 1.0}, {"exact": True}, None, 0.5, 1)
            for i in (0, 2, 3)]
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in done))
    sampler = EchoSampler()
    progress: list[EvalProgress] = []
    results = await run(sampler, tmp_path, 5, attempt=2, progress=progress)
    assert sorted(sampler.asked) == ["echo 1", "echo 4"]
    assert [r.attempt for r in results] == [1, 2, 1, 1, 2]
    assert [p.done for p in progress] == [4, 5]  # counts include the resumed items
    assert progress[-1].total == 5 and progress[-1].eta_seconds == 0.0


async def test_a_torn_last_line_is_dropped_and_that_item_sampled_again(tmp_path):
    path = tmp_path / "results.jsonl"
    good = ItemResult(0, "0", 1.0, {"exact": 1.0}, {"exact": True}, None, 0.5, 1)
    path.write_text(json.dumps(asdict(good)) + "\n" + '{"index": 1, "output_te')
    assert [r.index for r in load_results(path, 3)] == [0]
    assert path.read_text() == json.dumps(asdict(good)) + "\n"  # clean for the next append
    sampler = EchoSampler()
    results = await run(sampler, tmp_path, 3, attempt=2)
    assert sorted(sampler.asked) == ["echo 1", "echo 2"]
    assert [r.attempt for r in results] == [1, 2, 2]
    assert len(path.read_text().splitlines()) == 3
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_a_corrupt_line_in_the_middle_is_not_silently_dropped(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps(asdict(ItemResult(0, "0", 1.0, {}, {}, None, 0.5, 1)))
    path.write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(ValueError, match="line 2"):
        load_results(path, 3)


async def test_a_sampler_failure_is_that_items_error_and_the_run_goes_on(tmp_path):
    sampler = EchoSampler(fail={"echo 2"})
    progress: list[EvalProgress] = []
    results = await run(sampler, tmp_path, 5, progress=progress)
    failed = results[2]
    assert failed.error == "sampling_failed: ConnectionError: gateway went away"
    assert (failed.score, failed.output_text, failed.grader_scores) == (0.0, "", {"exact": 0.0})
    assert [r.score for r in results] == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert progress[-1].errors == 1
    assert progress[-1].running_score == pytest.approx(0.8)


async def test_progress_is_called_once_per_new_item_with_a_running_score(tmp_path):
    progress: list[EvalProgress] = []
    await run(EchoSampler(wrong_odd=True), tmp_path, 6, concurrency=2, progress=progress)
    assert [p.done for p in progress] == [1, 2, 3, 4, 5, 6]
    assert all(p.total == 6 and p.eta_seconds >= 0 for p in progress)
    assert progress[-1].running_score == pytest.approx(0.5)
    assert progress[-1].eta_seconds == 0.0
    assert progress[0].eta_seconds > 0  # 5 items to go at the pace seen so far


async def test_a_grader_that_raises_costs_only_that_item(tmp_path):
    class Broken:
        name = "broken"

        async def grade(self, item, sample):
            raise RuntimeError("bug")

        def check_items(self, items):
            pass

    results = await run_eval(items(2), EchoSampler(), [*GRADERS, Broken()], SAMPLING,
                             tmp_path / "r.jsonl", concurrency=2, attempt=1,
                             on_progress=lambda p: None)
    assert [r.score for r in results] == [0.5, 0.5]  # mean of the graders: (1 + 0) / 2
    assert results[0].error == "grader_failed: broken: RuntimeError: bug"


async def test_a_missing_template_field_is_an_item_error(tmp_path):
    broken = [{"input": "echo 0"}, {"input": "echo 1", "answer": "1"}]
    results = await run_eval(broken, EchoSampler(), GRADERS, SAMPLING, tmp_path / "r.jsonl",
                             concurrency=2, attempt=1, on_progress=lambda p: None)
    assert results[0].error.startswith("template_field_missing")
    assert results[0].score == 0.0 and results[1].score == 1.0


def test_the_record_summarises_the_results(tmp_path):
    specs = validate_graders([{"type": "regex", "name": "r", "pattern": "x"},
                              {"type": "json", "name": "j"}])
    results = [
        ItemResult(1, "x", 0.5, {"r": 1.0, "j": 0.0}, {"r": True, "j": False}, None, 0.2, 1),
        ItemResult(0, "", 0.0, {"r": 0.0, "j": 0.0}, {"r": None, "j": None},
                   "sampling_failed: TimeoutError", 0.1, 1),
        ItemResult(2, "[1]", 0.5, {"r": 0.0, "j": 1.0}, {"r": False, "j": True}, None, 0.2, 2),
        ItemResult(3, "x", 1.0, {"r": 1.0, "j": 1.0}, {"r": True, "j": True}, None, 0.2, 2),
    ]
    summary = summarize(results, specs, model="sql-lora@4", model_kind="adapter",
                        eval_set="shop-heldout@1", databases=["shop-db@1"], sampling=SAMPLING,
                        backend="gateway", job_id="job-1", seconds=2.0)
    assert summary.score == 0.5 and summary.ci_low <= 0.5 <= summary.ci_high
    assert (summary.num_items, summary.num_errors, summary.items_per_second) == (4, 1, 2.0)
    assert summary.grader_scores == {"r": 0.5, "j": 0.5}
    assert summary.graders_sha256 == graders_digest(specs) and summary.graders == specs
    assert summary.sampling == {"temperature": 0.0, "max_tokens": 8, "top_p": 1.0, "seed": 42}
    write_record(tmp_path / "record", summary, results)
    text = (tmp_path / "record" / SUMMARY_FILE).read_text()
    assert EvalSummary.model_validate_json(text) == summary
    lines = (tmp_path / "record" / RESULTS_FILE).read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "record").iterdir()) == [RESULTS_FILE, SUMMARY_FILE]


def test_an_empty_eval_summarises_to_zero():
    summary = summarize([], validate_graders([{"type": "json", "name": "j"}]), model="m@1",
                        model_kind="model", eval_set="e@1", databases=[], sampling=SAMPLING,
                        backend="local", job_id="", seconds=0.0)
    assert (summary.score, summary.ci_low, summary.ci_high, summary.num_items) == (0, 0, 0, 0)
    assert summary.grader_scores == {"j": 0.0} and summary.items_per_second == 0.0


class ChatServer(ThreadingHTTPServer):
    """An OpenAI-shaped chat endpoint on loopback (the gateway's stand-in for the client's
    side of the wire): answers each POST with the next scripted (status, body)."""

    def __init__(self, replies: list[tuple[int, dict]]):
        self.replies, self.requests = list(replies), []
        super().__init__(("127.0.0.1", 0), _ChatHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append((self.path, headers, body))
        status, reply = self.server.replies.pop(0)
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("retry-after-ms", "10")  # keep openai's retry backoff short here
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def completion(text: str) -> dict:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]}


async def test_the_gateway_sampler_sends_the_sampling_settings_and_retries_503():
    server = ChatServer([(503, {"error": {"message": "loading"}}), (200, completion("SELECT 1"))])
    sampler = GatewaySampler(server.url, "sk-test", "sql-lora@4", timeout=10)
    try:
        settings = SamplingConfig(temperature=0.5, max_tokens=12, top_p=0.9, seed=7)
        text = await sampler.sample([{"role": "user", "content": "q"}], settings)
    finally:
        await sampler.aclose()
        server.shutdown()
    assert text == "SELECT 1"
    assert len(server.requests) == 2  # the 503 was retried
    path, headers, body = server.requests[-1]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-test"
    assert body["model"] == "sql-lora@4"
    assert body["messages"] == [{"role": "user", "content": "q"}]
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["seed"]) == (
        0.5, 12, 0.9, 7)


async def test_a_refused_request_is_a_sampling_error_of_that_item(tmp_path):
    server = ChatServer([(400, {"error": {"message": "model 'x' not found"}}),
                         (200, completion("1"))])
    sampler = GatewaySampler(server.url + "/v1", None, "x", timeout=10)
    try:
        results = await run_eval(items(2), sampler, GRADERS, SAMPLING, tmp_path / "r.jsonl",
                                 concurrency=1, attempt=1, on_progress=lambda p: None)
    finally:
        await sampler.aclose()
        server.shutdown()
    assert results[0].error.startswith("sampling_failed: BadRequestError")
    assert (results[1].score, results[1].error) == (1.0, None)
    assert server.requests[0][0] == "/v1/chat/completions"
