"""The eval worker's small decisions: which items a resumed attempt counts as graded, how often
progress is reported, the gateway probe of backend auto, and the memory an eval job asks for."""

from __future__ import annotations

import json
import socket

from services.evaluation.runner import EvalProgress
from services.trainer.device import DeviceInfo
from services.trainer.memory import GIB, ModelShape, estimate_eval_memory
from services.trainer.worker import evaluate
from services.trainer.worker.protocol import parse_event_line

SMOLLM2_135M = ModelShape(
    hidden=576,
    layers=30,
    heads=9,
    kv_heads=3,
    head_dim=64,
    intermediate=1536,
    vocab=49152,
    tied_embeddings=True,
)
CPU = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * GIB, name="cpu")


def test_a_torn_last_line_is_not_counted_as_graded(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = [json.dumps({"index": i, "attempt": 1}) for i in (0, 3)]
    path.write_text("\n".join(lines) + '\n{"index": 5, "att')
    assert evaluate.graded_indexes(path) == {0, 3}
    assert evaluate.graded_indexes(tmp_path / "none.jsonl") == set()


def test_progress_is_reported_at_once_then_at_most_twice_a_second_and_always_at_the_end(
    capsys, monkeypatch
):
    clock = iter([100.0, 100.1, 100.2, 100.7, 100.8])
    monkeypatch.setattr(evaluate.time, "monotonic", lambda: next(clock))
    report = evaluate.ProgressReporter()
    for done in (1, 2, 3, 4, 5):
        report(EvalProgress(done=done, total=5, running_score=0.5, eta_seconds=1.0, errors=0))
    events = [parse_event_line(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["step"] for e in events if e] == [1, 4, 5]
    assert all(e["running_score"] == 0.5 and e["total_steps"] == 5 for e in events if e)


def test_backend_auto_falls_back_to_local_when_no_gateway_answers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not evaluate.gateway_serves(f"http://127.0.0.1:{port}", None, "m@1")


def test_an_eval_through_the_gateway_asks_for_little_memory_and_a_local_one_for_the_weights():
    gateway = estimate_eval_memory(None, "gateway", 256, CPU)
    local = estimate_eval_memory(SMOLLM2_135M, "local", 256, CPU)
    assert gateway.peak_bytes < GIB
    terms = dict(local.terms)
    # fp32 on the CPU: ~135M parameters x 4 bytes.
    assert 0.5 * GIB < terms["base_weights"] < 0.6 * GIB
    assert local.peak_bytes > gateway.peak_bytes and local.fits
    longer = estimate_eval_memory(SMOLLM2_135M, "local", 4096, CPU)
    assert dict(longer.terms)["kv_cache"] > terms["kv_cache"]
