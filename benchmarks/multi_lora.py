"""Many adapters: the gateway in front of vLLM vs vLLM alone with its filesystem LoRA resolver.

For each N adapters (default 1, 8, 32) and each traffic shape (even: every adapter equally
often; zipf: rank k drawn with weight k^-1.1, a few hot adapters and a long cold tail), the same
seeded schedule of streamed chats is sent to
  (a) the gateway, which resolves `"model": NAME` in the registry, fetches and verifies the
      adapter, loads it into its engine at runtime and unloads the least recently used beyond
      max-cpu-loras, and
  (b) a plain vLLM server with the `lora_filesystem_resolver` plugin (vLLM's own answer to "load
      an adapter on first request": the peer a user would pick instead), reading the same
      adapter folders from VLLM_LORA_RESOLVER_CACHE_DIR/NAME.
Reported per (N, shape), for both and as gateway/vLLM ratios: completion tokens/s, time to
first token p50/p99 over all requests and over cold ones (the first request of an adapter on
that server) and over every request that waited for a load (sent before its adapter's first
token came back), and cold loads/s (adapters first served during the run / its wall time). A
closing cold burst (fresh adapters, one 1-token chat each) gives cold loads/s flat out.

    .venv/bin/python benchmarks/multi_lora.py [--adapters 1,8,32] [--requests 48]
        [--max-tokens 8] [--reps 2] [--burst 16] [--concurrency 8] [--max-loras 8]
        [--max-cpu-loras 16] [--quick]

Both engines run at once with the same flags (dtype float32 unless BENCH_DTYPE, max-model-len,
max-loras, max-cpu-loras, max-lora-rank, KV cache); each (N, shape) runs `--reps` times, which
side goes first alternating. Every repetition uses adapter names of its own, so each starts
cold on both servers; adapters of earlier runs stay behind and compete for the same engine
slots on both sides alike. Names of
one N share the weights of N seeded adapters (building one takes ~1.3 s here) but each is a
distinct artifact (its README names it), so the gateway fetches every one from the registry.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from gateway import BASE, NO_REGISTRY_METRICS, stream_one  # noqa: E402  (benchmarks/gateway.py)

from services.client.processes import free_port  # noqa: E402
from tests.helpers.gateway_process import GatewayProcess, start_gateway  # noqa: E402
from tests.helpers.lora import make_lora_adapter  # noqa: E402
from tests.helpers.registry_process import start_registry  # noqa: E402

ZIPF_S = 1.1
MAX_MODEL_LEN = 1024


# -- engines -------------------------------------------------------------------------------------


@dataclass
class EngineFlags:
    max_loras: int
    max_cpu_loras: int
    dtype: str = field(default_factory=lambda: os.environ.get("BENCH_DTYPE", "float32"))
    kv_cache_gib: str = field(
        default_factory=lambda: os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))


def launch_vllm(model_dir: Path, log: Path, flags: EngineFlags,
                extra_env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A vLLM-cpu OpenAI server on a free loopback port, in its own session (a Ctrl-C in the
    terminal reaches only this script, whose `finally` stops it); not waited for."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": flags.kv_cache_gib,
           "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **extra_env}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", BASE, "--enable-lora", "--max-loras", str(flags.max_loras),
           "--max-cpu-loras", str(flags.max_cpu_loras), "--max-lora-rank", "16",
           "--dtype", flags.dtype, "--max-model-len", str(MAX_MODEL_LEN),
           "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_vllm(proc: subprocess.Popen, url: str, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"vLLM did not start; see {log}")


def stop_vllm(proc: subprocess.Popen) -> None:
    """SIGTERM (vLLM stops its engine-core children), then SIGKILL the whole session."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# -- adapters ------------------------------------------------------------------------------------


def build_weights(base_dir: Path, out: Path, n: int) -> list[Path]:
    """`n` seeded PEFT adapters whose config names the base exactly as vLLM's `--model` does:
    the filesystem resolver serves an adapter only when `base_model_name_or_path` equals it."""
    folders = []
    for i in range(n):
        folder = make_lora_adapter(base_dir, out / f"w{i}", seed=1000 + i)
        config_path = folder / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = str(base_dir)
        config_path.write_text(json.dumps(config, indent=2))
        folders.append(folder)
    return folders


def stage_adapter(weights: Path, resolver_dir: Path, name: str) -> Path:
    """NAME's folder in the resolver's directory: `weights` with a README of its own, so that
    each name is a distinct artifact (its own manifest sha256) in the registry too."""
    folder = resolver_dir / name
    shutil.copytree(weights, folder)
    with (folder / "README.md").open("a") as readme:
        readme.write(f"\nBenchmark adapter `{name}`.\n")
    return folder


# -- traffic -------------------------------------------------------------------------------------


def schedule(names: list[str], shape: str, requests: int, seed: int) -> list[str]:
    """The order requests name adapters in: `even` has every adapter equally often (within
    one) in a shuffled order; `zipf` draws rank k with weight k^-1.1."""
    rng = random.Random(seed)
    if shape == "even":
        order = [names[i % len(names)] for i in range(requests)]
        rng.shuffle(order)
        return order
    weights = [1 / (k + 1) ** ZIPF_S for k in range(len(names))]
    return rng.choices(names, weights=weights, k=requests)


@dataclass
class RunResult:
    """One or more runs of a schedule on one server, pooled."""

    wall: float
    tokens: int
    ttft: list[float]
    cold_ttft: list[float]  # the first request of each adapter
    waited_ttft: list[float]  # every request sent before its adapter's first token came back
    errors: list[str]

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall

    @property
    def cold_per_s(self) -> float:
        return len(self.cold_ttft) / self.wall

    def __add__(self, other: RunResult) -> RunResult:
        return RunResult(self.wall + other.wall, self.tokens + other.tokens,
                         self.ttft + other.ttft, self.cold_ttft + other.cold_ttft,
                         self.waited_ttft + other.waited_ttft, self.errors + other.errors)


async def drive(url: str, order: list[str], concurrency: int, max_tokens: int) -> RunResult:
    """`order` as streamed chats, `concurrency` in flight, each worker taking the next one."""
    first_index = {name: order.index(name) for name in set(order)}
    queue = list(enumerate(order))
    samples: list[tuple[str, int, float, float]] = []  # name, index, sent at, ttft
    errors: list[str] = []
    tokens = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker() -> None:
            nonlocal tokens
            while queue:
                index, name = queue.pop(0)
                sent = time.perf_counter()
                try:
                    result = await stream_one(client, url, name, max_tokens)
                except httpx.HTTPStatusError as exc:
                    errors.append(f"{exc.response.status_code} for {name}")
                    continue
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__} for {name}")
                    continue
                tokens += result["tokens"]
                samples.append((name, index, sent, result["ttft"]))

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - start
    # No token of an adapter comes back before it is loaded: whatever was sent before the
    # first one had to wait for that load, on either server.
    ready: dict[str, float] = {}
    for name, _, sent, ttft in samples:
        ready[name] = min(ready.get(name, float("inf")), sent + ttft)
    return RunResult(
        wall, tokens, [s[3] for s in samples],
        [ttft for name, index, _, ttft in samples if first_index[name] == index],
        [ttft for name, _, sent, ttft in samples if sent < ready[name]], errors)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


GATEWAY_COUNTERS = {
    "loads": ("gateway_adapter_loads_total", {"result": "loaded"}),
    "failed": ("gateway_adapter_loads_total", {"result": "failed"}),
    "unloads": ("gateway_adapter_unloads_total", {}),
    "fetch_s": ("gateway_adapter_load_duration_seconds_sum", {"phase": "fetch"}),
    "verify_s": ("gateway_adapter_load_duration_seconds_sum", {"phase": "verify"}),
    "load_s": ("gateway_adapter_load_duration_seconds_sum", {"phase": "load"}),
    "fetches": ("gateway_adapter_load_duration_seconds_count", {"phase": "fetch"}),
    "cache_hits": ("gateway_adapter_cache_hits_total", {}),
}


def gateway_counters(gateway: GatewayProcess) -> dict[str, float]:
    return {key: gateway.metric(name, **labels)
            for key, (name, labels) in GATEWAY_COUNTERS.items()}


@dataclass
class Row:
    n: int
    shape: str
    distinct: int  # adapters the schedule names, over all repetitions
    gateway: RunResult
    vllm: RunResult
    gw_counters: dict[str, float]


@dataclass
class Spec:
    n: int
    shape: str
    names: list[list[str]]  # one list of N fresh names per repetition


def measure(spec: Spec, gateway: GatewayProcess, vllm_url: str, args: argparse.Namespace,
            gateway_first: bool) -> Row:
    """The same schedule (under fresh names each repetition, so each starts cold) on both
    sides, which goes first alternating between repetitions (ABBA when there are two)."""
    before = gateway_counters(gateway)
    runs: dict[str, list[RunResult]] = {"gateway": [], "vllm": []}
    distinct = 0
    for rep, names in enumerate(spec.names):
        order = schedule(names, spec.shape, args.requests, seed=args.seed + spec.n)
        distinct += len(set(order))
        sides = [("gateway", gateway.url), ("vllm", vllm_url)]
        if gateway_first == (rep % 2 == 1):
            sides.reverse()
        for side, url in sides:
            runs[side].append(asyncio.run(drive(url, order, args.concurrency, args.max_tokens)))
    after = gateway_counters(gateway)
    delta = {key: after[key] - before[key] for key in before}
    return Row(spec.n, spec.shape, distinct, sum(runs["gateway"][1:], runs["gateway"][0]),
               sum(runs["vllm"][1:], runs["vllm"][0]), delta)


# -- report --------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b > 0 and a == a and b == b else "    - "


def counters_line(label: str, c: dict[str, float], distinct: int) -> str:
    fetches, loads = max(c["fetches"], 1), max(c["loads"], 1)
    return (f"  {label:<10} loads {c['loads']:3.0f} ({distinct} distinct) failed "
            f"{c['failed']:.0f} unloads {c['unloads']:3.0f} cache hits {c['cache_hits']:3.0f}  "
            f"fetch {c['fetch_s'] / fetches * 1000:5.0f} ms  verify "
            f"{c['verify_s'] / loads * 1000:4.0f} ms  load {c['load_s'] / loads * 1000:5.0f} ms")


def print_report(rows: list[Row], burst: dict[str, RunResult],
                 burst_counters: dict[str, float], args: argparse.Namespace,
                 flags: EngineFlags) -> None:
    print(f"\n== multi-adapter benchmark: {args.reps} x {args.requests} streamed chats x "
          f"{args.max_tokens} tokens per row and side, {args.concurrency} in flight; engines: "
          f"dtype {flags.dtype}, "
          f"max-loras {flags.max_loras}, max-cpu-loras {flags.max_cpu_loras}, max-model-len "
          f"{MAX_MODEL_LEN}; zipf s={ZIPF_S}, seed {args.seed} ==")
    print("TTFT in ms; cold = first request of an adapter on that server; cold/s = adapters "
          "first served / run wall time")
    head = (f"{'N':>3} {'traffic':<5} {'side':<8} {'tok/s':>7} {'ttft p50':>9} {'ttft p99':>9} "
            f"{'cold n':>6} {'cold p50':>9} {'cold p99':>9} {'cold/s':>7} {'errors':>6}")
    print(head)
    print("-" * len(head))
    for row in rows:
        for side, run in (("gateway", row.gateway), ("vllm", row.vllm)):
            print(f"{row.n:>3} {row.shape:<5} {side:<8} {run.tok_s:7.1f} "
                  f"{percentile(run.ttft, 0.5) * 1000:9.0f} "
                  f"{percentile(run.ttft, 0.99) * 1000:9.0f} {len(run.cold_ttft):>6} "
                  f"{percentile(run.cold_ttft, 0.5) * 1000:9.0f} "
                  f"{percentile(run.cold_ttft, 0.99) * 1000:9.0f} {run.cold_per_s:7.2f} "
                  f"{len(run.errors):>6}")
        g, v = row.gateway, row.vllm
        print(f"{'':>3} {'':<5} {'gw/vllm':<8} {ratio(g.tok_s, v.tok_s):>7} "
              f"{ratio(percentile(g.ttft, 0.5), percentile(v.ttft, 0.5)):>9} "
              f"{ratio(percentile(g.ttft, 0.99), percentile(v.ttft, 0.99)):>9} {'':>6} "
              f"{ratio(percentile(g.cold_ttft, 0.5), percentile(v.cold_ttft, 0.5)):>9} "
              f"{ratio(percentile(g.cold_ttft, 0.99), percentile(v.cold_ttft, 0.99)):>9} "
              f"{ratio(g.cold_per_s, v.cold_per_s):>7}")
    print("\nrequests that waited for a load (sent before their adapter's first token came back "
          "on that server; the first request is one of them): TTFT ms")
    for row in rows:
        gw, vl = row.gateway.waited_ttft, row.vllm.waited_ttft
        print(f"  N={row.n:<3} {row.shape:<5} gateway n {len(gw):3} p50 "
              f"{percentile(gw, 0.5) * 1000:6.0f} p99 {percentile(gw, 0.99) * 1000:6.0f}   vllm "
              f"n {len(vl):3} p50 {percentile(vl, 0.5) * 1000:6.0f} p99 "
              f"{percentile(vl, 0.99) * 1000:6.0f}   p99 gw/vllm "
              f"{ratio(percentile(gw, 0.99), percentile(vl, 0.99))}")
    print("\ngateway adapter work per row (from its /metrics): loads into the engine "
          "(distinct adapters the schedules name), unloads to stay within max-cpu-loras, mean "
          "time per load by phase")
    for row in rows:
        print(counters_line(f"N={row.n} {row.shape}", row.gw_counters, row.distinct))
    print(counters_line("cold burst", burst_counters, args.burst))
    errors = [(row.n, row.shape, side, e) for row in rows
              for side, run in (("gateway", row.gateway), ("vllm", row.vllm)) for e in run.errors]
    for n, shape, side, error in errors[:20]:
        print(f"  error N={n} {shape} {side}: {error}")
    gb, vb = burst["gateway"], burst["vllm"]
    print(f"\ncold burst: {args.burst} adapters neither server had seen, one 1-token chat each, "
          f"{args.concurrency} in flight")
    for side, run in (("gateway", gb), ("vllm", vb)):
        print(f"  {side:<8} {run.cold_per_s:5.2f} cold loads/s  TTFT p50 "
              f"{percentile(run.ttft, 0.5) * 1000:5.0f} ms  p99 "
              f"{percentile(run.ttft, 0.99) * 1000:5.0f} ms  errors {len(run.errors)}")
    print(f"  gw/vllm  {ratio(gb.cold_per_s, vb.cold_per_s)} cold loads/s, TTFT p99 "
          f"{ratio(percentile(gb.ttft, 0.99), percentile(vb.ttft, 0.99))}")
    total_g = sum(r.gateway.tokens for r in rows) / sum(r.gateway.wall for r in rows)
    total_v = sum(r.vllm.tokens for r in rows) / sum(r.vllm.wall for r in rows)
    colds_g = [t for r in rows for t in r.gateway.cold_ttft]
    colds_v = [t for r in rows for t in r.vllm.cold_ttft]
    waited_g = [t for r in rows for t in r.gateway.waited_ttft]
    waited_v = [t for r in rows for t in r.vllm.waited_ttft]
    print(f"\nall rows: gateway {total_g:.1f} tok/s vs vLLM resolver {total_v:.1f} tok/s -> "
          f"{total_g / total_v:.3f}x; cold TTFT p99 gateway "
          f"{percentile(colds_g, 0.99) * 1000:.0f} ms vs vLLM "
          f"{percentile(colds_v, 0.99) * 1000:.0f} ms ({len(colds_g)} cold requests each); "
          f"waited-for-load TTFT p99 gateway {percentile(waited_g, 0.99) * 1000:.0f} ms vs vLLM "
          f"{percentile(waited_v, 0.99) * 1000:.0f} ms")


# -- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", default="1,8,32",
                        help="comma-separated adapter counts N (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=48, help="streamed chats per run")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8,
                        help="chats in flight (the gateway admits 8 per CPU engine at once)")
    parser.add_argument("--max-loras", type=int, default=8)
    parser.add_argument("--max-cpu-loras", type=int, default=16)
    parser.add_argument("--reps", type=int, default=2,
                        help="repetitions per row, fresh adapters each, sides alternating")
    parser.add_argument("--burst", type=int, default=16,
                        help="fresh adapters asked once each at the end: cold loads/s flat out")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N 1,4, 12 chats x 4 tokens")
    args = parser.parse_args()
    if args.quick:
        args.adapters, args.requests, args.max_tokens, args.reps = "1,4", 12, 4, 1
        args.burst = 4
    args.counts = [int(x) for x in args.adapters.split(",")]
    if min(args.counts) < 1 or args.reps < 1 or args.max_cpu_loras < args.max_loras:
        parser.error("adapter counts and --reps must be >= 1, --max-cpu-loras >= --max-loras")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args()
    # A SIGTERM (a CI job's timeout) unwinds like Ctrl-C, so `finally` stops every server.
    signal.signal(signal.SIGTERM, _interrupt)

    from services.client.model_import import import_model
    from services.client.registry import RegistryClient

    flags = EngineFlags(args.max_loras, args.max_cpu_loras)
    work = Path(tempfile.mkdtemp(prefix="tuneplex-bench-multi-lora-"))
    resolver_dir = work / "resolver"
    resolver_dir.mkdir()
    base_dir = import_model(BASE, home=REPO / ".tuneplex-test").path
    registry = start_registry(work / "registry", env=NO_REGISTRY_METRICS)
    client = RegistryClient(registry.target)
    engines: list[subprocess.Popen] = []
    gateway: GatewayProcess | None = None
    try:
        # Both engines start while the adapters are built: startup is the longest wait.
        plain, plain_url = launch_vllm(base_dir, work / "vllm-gateway.log", flags, {})
        engines.append(plain)
        resolving, resolver_url = launch_vllm(base_dir, work / "vllm-resolver.log", flags, {
            "VLLM_PLUGINS": "lora_filesystem_resolver",
            "VLLM_LORA_RESOLVER_CACHE_DIR": str(resolver_dir)})
        engines.append(resolving)

        started = time.perf_counter()
        client.push("model", BASE, base_dir, source=BASE)
        weights = build_weights(base_dir, work / "weights", max(args.counts))
        specs: list[Spec] = []
        for n in args.counts:
            # With one adapter both shapes are the same schedule: run it once.
            for shape in ("even",) if n == 1 else ("even", "zipf"):
                spec = Spec(n, shape, [[f"ml-n{n}-{shape}-r{r}-{i}" for i in range(n)]
                                       for r in range(args.reps)])
                for names in spec.names:
                    for name, w in zip(names, weights, strict=False):
                        folder = stage_adapter(w, resolver_dir, name)
                        client.push("adapter", name, folder, base_model=f"{BASE}@1")
                specs.append(spec)
        burst_names = [f"ml-burst-{i}" for i in range(args.burst)]
        for name, w in zip(burst_names, itertools.cycle(weights), strict=False):
            client.push("adapter", name, stage_adapter(w, resolver_dir, name),
                        base_model=f"{BASE}@1")
        print(f"built and pushed {sum(len(n) for s in specs for n in s.names) + args.burst} "
              "adapters in "
              f"{time.perf_counter() - started:.0f} s", flush=True)

        wait_vllm(plain, plain_url, work / "vllm-gateway.log")
        wait_vllm(resolving, resolver_url, work / "vllm-resolver.log")
        gateway = start_gateway(work / "gateway", registry.target, api_key=None, env={
            "TUNEPLEX_GATEWAY_ENGINE_URLS": f'["{plain_url}"]',
            "TUNEPLEX_GATEWAY_BASE_MODELS": f'["{base_dir}"]',
            "TUNEPLEX_GATEWAY_MAX_LORAS": str(flags.max_loras),
            "TUNEPLEX_GATEWAY_MAX_CPU_LORAS": str(flags.max_cpu_loras),
            "TUNEPLEX_GATEWAY_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            "TUNEPLEX_GATEWAY_DTYPE": flags.dtype,
            "TUNEPLEX_GATEWAY_LOG_LEVEL": "WARNING"})
        gateway.wait_healthy(120)
        # Warm both paths' connections and the base model's kernels before anything is timed.
        for url in (gateway.url, resolver_url):
            asyncio.run(drive(url, [BASE] * args.concurrency, args.concurrency, 4))

        rows = []
        for i, spec in enumerate(specs):
            row = measure(spec, gateway, resolver_url, args, gateway_first=i % 2 == 0)
            rows.append(row)
            print(f"N={row.n} {row.shape}: gateway {row.gateway.tok_s:.1f} tok/s, vLLM "
                  f"{row.vllm.tok_s:.1f} tok/s", flush=True)
        # Cold loads at full tilt: every request names an adapter that server never saw.
        before = gateway_counters(gateway)
        burst = {side: asyncio.run(drive(url, burst_names, args.concurrency, 1))
                 for side, url in (("vllm", resolver_url), ("gateway", gateway.url))}
        burst_counters = {k: v - before[k] for k, v in gateway_counters(gateway).items()}
    finally:
        client.close()
        if gateway is not None:
            gateway.stop()
        for proc in engines:
            stop_vllm(proc)
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_report(rows, burst, burst_counters, args, flags)


if __name__ == "__main__":
    main()
