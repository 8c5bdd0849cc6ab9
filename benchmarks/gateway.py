"""Gateway overhead and adapter serving, measured against vLLM directly in one run.

(a) 8 concurrent streams on the base model: throughput and p50 latency through the gateway vs
    straight to the same vLLM server (aim >= 0.95x throughput, <= 5 ms added p50).
(b) cold adapter load: time to first token of the first request to a newly published ~10 MB
    adapter minus a warm request's, split into fetch (registry download, sha256 checked while
    streaming), verify (sha256 of the cached copy) and load (vLLM), from the gateway's metrics.
(c) 8 distinct adapters round-robin vs one adapter, same requests, all adapters warm.

    .venv/bin/python benchmarks/gateway.py [--requests 32] [--max-tokens 32]

Starts its own registry, one vLLM server and a gateway attached to it (the k8s topology), all on
loopback; both paths hit the same engine, runs alternate to spread out noise from neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.client.processes import free_port  # noqa: E402
from tests.helpers.gateway_process import start_gateway  # noqa: E402
from tests.helpers.lora import make_lora_adapter  # noqa: E402
from tests.helpers.registry_process import start_registry  # noqa: E402

# Metrics off: a benchmark's registry must not take the default metrics port (9090).
NO_REGISTRY_METRICS = {"TUNEPLEX_REGISTRY_METRICS_PORT": "0"}
BASE = "smollm2-135m-instruct"
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPT = "Write a short story about a robot who learns to paint."


def start_vllm(model_dir: Path, log: Path, max_loras: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", BASE, "--enable-lora", "--max-loras", str(max_loras),
           "--max-cpu-loras", str(max_loras + 4), "--max-lora-rank", "16",
           "--dtype", os.environ.get("BENCH_DTYPE", "float32"), "--max-model-len", "1024",
           "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("vLLM did not start")


async def stream_one(client: httpx.AsyncClient, url: str, model: str, max_tokens: int) -> dict:
    """One streamed chat completion: latency, time to first token, completion tokens."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if ttft is None and '"content":"' in line and '"content":""' not in line:
                ttft = time.perf_counter() - start
            if '"usage":{' in line:
                tokens = int(line.split('"completion_tokens":')[1].split("}")[0].split(",")[0])
    return {"latency": time.perf_counter() - start, "ttft": ttft or 0.0, "tokens": tokens}


async def load_test(url: str, models: list[str], requests: int, concurrency: int,
                    max_tokens: int) -> dict:
    """`requests` streams over `models` round-robin, `concurrency` at a time."""
    queue = [models[i % len(models)] for i in range(requests)]
    results: list[dict] = []
    async with httpx.AsyncClient(timeout=600) as client:
        async def worker():
            while queue:
                results.append(await stream_one(client, url, queue.pop(0), max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - start
    return {"tok_s": sum(r["tokens"] for r in results) / wall,
            "p50": statistics.median(r["latency"] for r in results),
            "ttft_p50": statistics.median(r["ttft"] for r in results)}


async def paired_overhead(direct_url: str, gateway_url: str, pairs: int) -> dict:
    """Added latency of one request on an otherwise idle engine: direct and gateway requests
    alternate, so neighbours' noise hits both alike; the median of the differences."""
    diffs, ttft_diffs = [], []
    async with httpx.AsyncClient(timeout=600) as client:
        for _ in range(pairs):
            d = await stream_one(client, direct_url, BASE, 4)
            g = await stream_one(client, gateway_url, BASE, 4)
            diffs.append(g["latency"] - d["latency"])
            ttft_diffs.append(g["ttft"] - d["ttft"])
    return {"latency": statistics.median(diffs), "ttft": statistics.median(ttft_diffs)}


def merge(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def phase_sums(gateway) -> dict[str, float]:
    return {p: gateway.metric("gateway_adapter_load_duration_seconds_sum", phase=p)
            for p in ("fetch", "verify", "load")}


async def cold_load(gateway, push, name: str, seed: int) -> dict:
    push(name, seed, rank=8, targets=ALL_LINEAR)
    before = phase_sums(gateway)
    async with httpx.AsyncClient(timeout=600) as client:
        cold = await stream_one(client, gateway.url, name, 2)
        warm = min([await stream_one(client, gateway.url, name, 2) for _ in range(3)],
                   key=lambda r: r["ttft"])
    after = phase_sums(gateway)
    return {"extra": cold["ttft"] - warm["ttft"], "cold": cold["ttft"], "warm": warm["ttft"],
            **{p: after[p] - before[p] for p in before}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from services.client.model_import import import_model
    from services.client.registry import RegistryClient

    work = Path(tempfile.mkdtemp(prefix="tuneplex-bench-gw-"))
    base_dir = import_model(BASE, home=REPO / ".tuneplex-test").path
    registry = start_registry(work / "registry", env=NO_REGISTRY_METRICS)
    vllm = gateway = None
    client = RegistryClient(registry.target)
    try:
        client.push("model", BASE, base_dir, source=BASE)

        def push(name, seed, **kw):
            folder = make_lora_adapter(base_dir, work / "adapters" / name, seed=seed, **kw)
            return client.push("adapter", name, folder, base_model=f"{BASE}@1")

        adapters = [f"bench-lora-{i}" for i in range(8)]
        for i, name in enumerate(adapters):
            push(name, seed=100 + i)
        vllm, vllm_url = start_vllm(base_dir, work / "vllm.log", max_loras=8)
        gateway = start_gateway(work / "gateway", registry.target, api_key=None, env={
            "TUNEPLEX_GATEWAY_ENGINE_URLS": f'["{vllm_url}"]',
            "TUNEPLEX_GATEWAY_BASE_MODELS": f'["{base_dir}"]',
            "TUNEPLEX_GATEWAY_MAX_LORAS": "8", "TUNEPLEX_GATEWAY_MAX_CPU_LORAS": "12",
            "TUNEPLEX_GATEWAY_LOG_LEVEL": "WARNING"})
        gateway.wait_healthy(120)

        n, mt = args.requests, args.max_tokens
        asyncio.run(load_test(gateway.url, [BASE], 8, 8, 8))  # warm both paths' connections
        asyncio.run(load_test(vllm_url, [BASE], 8, 8, 8))
        direct, through = [], []
        gw_proc, gw_cpu, gw_wall = psutil.Process(gateway.process.pid), 0.0, 0.0
        for _ in range(args.reps):
            direct.append(asyncio.run(load_test(vllm_url, [BASE], n, 8, mt)))
            cpu0, wall0 = sum(gw_proc.cpu_times()[:2]), time.perf_counter()
            through.append(asyncio.run(load_test(gateway.url, [BASE], n, 8, mt)))
            gw_cpu += sum(gw_proc.cpu_times()[:2]) - cpu0
            gw_wall += time.perf_counter() - wall0
        d, g = merge(direct), merge(through)
        paired = asyncio.run(paired_overhead(vllm_url, gateway.url, 40))

        colds = [asyncio.run(cold_load(gateway, push, f"cold-lora-{i}", 200 + i))
                 for i in range(3)]
        size = sum(f.size_bytes for f in client.resolve("adapter", "cold-lora-0").manifest.files)

        asyncio.run(load_test(gateway.url, adapters, 8, 8, 2))  # all eight loaded and warm
        one, eight = [], []
        for _ in range(args.reps):
            one.append(asyncio.run(load_test(gateway.url, adapters[:1], n, 8, mt)))
            eight.append(asyncio.run(load_test(gateway.url, adapters, n, 8, mt)))
        o, e = merge(one), merge(eight)
        base_tok_s = g["tok_s"]
    finally:
        client.close()
        if gateway is not None:
            gateway.stop()
        if vllm is not None:
            vllm.terminate()
            vllm.wait(30)
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)

    cold = merge(colds)
    print(f"\n== gateway benchmark ({n} requests x {mt} tokens, 8 concurrent streams, "
          f"median of {args.reps}) ==")
    print(f"(a) direct vLLM : {d['tok_s']:7.1f} tok/s  p50 {d['p50'] * 1000:7.1f} ms  "
          f"ttft p50 {d['ttft_p50'] * 1000:6.1f} ms")
    print(f"    via gateway : {g['tok_s']:7.1f} tok/s  p50 {g['p50'] * 1000:7.1f} ms  "
          f"ttft p50 {g['ttft_p50'] * 1000:6.1f} ms")
    print(f"    throughput ratio {g['tok_s'] / d['tok_s']:.3f}x   added p50 "
          f"{(g['p50'] - d['p50']) * 1000:+.1f} ms   added ttft p50 "
          f"{(g['ttft_p50'] - d['ttft_p50']) * 1000:+.1f} ms")
    print(f"    one idle request at a time (40 alternating pairs): gateway adds "
          f"{paired['latency'] * 1000:+.2f} ms end to end, {paired['ttft'] * 1000:+.2f} ms to "
          f"first token (median of paired differences)")
    print(f"    gateway process CPU while proxying: {gw_cpu / gw_wall * 100:.1f}% of one core")
    print(f"(b) cold load of a {size / 1e6:.1f} MB adapter (median of {len(colds)}): "
          f"first-token {cold['cold'] * 1000:.0f} ms vs warm {cold['warm'] * 1000:.0f} ms "
          f"-> +{cold['extra'] * 1000:.0f} ms")
    print(f"    split: fetch {cold['fetch'] * 1000:.0f} ms, verify {cold['verify'] * 1000:.0f} ms, "
          f"load {cold['load'] * 1000:.0f} ms, rest "
          f"{(cold['extra'] - cold['fetch'] - cold['verify'] - cold['load']) * 1000:.0f} ms")
    print(f"(c) one adapter : {o['tok_s']:7.1f} tok/s  p50 {o['p50'] * 1000:7.1f} ms")
    print(f"    8 round-robin: {e['tok_s']:7.1f} tok/s  p50 {e['p50'] * 1000:7.1f} ms")
    print(f"    8-adapter / 1-adapter throughput {e['tok_s'] / o['tok_s']:.3f}x; "
          f"1 adapter / base {o['tok_s'] / base_tok_s:.3f}x")


if __name__ == "__main__":
    main()
