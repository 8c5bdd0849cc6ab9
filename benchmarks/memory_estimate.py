"""The training memory estimate (``services/trainer/memory.py``) against measured peaks.

For each configuration the SFT recipe runs as the worker runs it, in a fresh process
(``python -m services.trainer.recipes.sft``: our tokenization, PEFT, TRL ``SFTTrainer``, a few
optimizer steps), and its peak RSS is the kernel's high-water mark of that process
(``os.wait4``'s ``ru_maxrss``; polling would miss the short peak of a backward pass). A watchdog
kills a run whose RSS passes ``--limit-gib`` so a shared machine is never driven into the OOM
killer; that row is reported as over the limit.

The estimate assumes every row is ``max_seq_length`` tokens long (admission has no tokenizer
and no token counts of the dataset), so the rows here fill it: the chats are truncated to
exactly ``max_seq_length`` tokens; with packing, half-length chats packed two to a row.

    .venv/bin/python benchmarks/memory_estimate.py [--steps 2] [--only NAME ...] [--limit-gib 16]

Needs the base model folder (imported on first use into ``.tuneplex-test/``, as the tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from services.trainer.device import DeviceInfo  # noqa: E402
from services.trainer.memory import GIB, ModelShape, estimate_memory  # noqa: E402
from services.trainer.spec import TrainingConfig  # noqa: E402

# SmolLM2's chat template adds its default system prompt and the role markers: a reply of n
# " a" tokens renders to n + 34 tokens (checked with the recipe's own tokenize_conversation).
TEMPLATE_TOKENS = 34

# (name, TrainingConfig fields): LoRA r=16 on all linear layers in fp32 unless said otherwise.
CONFIGS: list[tuple[str, dict]] = [
    ("lora b1 s256", {"batch_size": 1, "max_seq_length": 256}),
    ("lora b8 s256", {"batch_size": 8, "max_seq_length": 256}),
    ("lora b2 s512", {"batch_size": 2, "max_seq_length": 512}),
    ("lora b1 s1024", {"batch_size": 1, "max_seq_length": 1024}),
    ("lora b4 s256 ckpt", {"batch_size": 4, "max_seq_length": 256, "gradient_checkpointing": True}),
    ("lora b4 s256 packing", {"batch_size": 4, "max_seq_length": 256, "packing": True}),
    ("full b2 s256", {"batch_size": 2, "max_seq_length": 256, "method": "full"}),
]


def chats(n: int, tokens: int) -> list[dict]:
    """``n`` chats that render to ``tokens`` tokens each (or more, to be truncated)."""
    reply = " a" * max(1, tokens - TEMPLATE_TOKENS)
    return [
        {
            "messages": [
                {"role": "user", "content": "Count."},
                {"role": "assistant", "content": reply},
            ]
        }
    ] * n


def peak_rss_of(cmd: list[str], env: dict, limit: int) -> tuple[int, bool, str]:
    """(peak RSS in bytes, killed by the watchdog, output tail) of one run of ``cmd``."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed = threading.Event()

    def watch() -> None:
        p = psutil.Process(proc.pid)
        while proc.returncode is None:
            try:
                if p.memory_info().rss > limit:
                    killed.set()
                    p.kill()
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    output = proc.stdout.read()
    # wait4 reaps this very child and returns its own rusage (ru_maxrss in KiB on Linux).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode and not killed.is_set():
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return usage.ru_maxrss * 1024, killed.is_set(), output[-500:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per run")
    parser.add_argument("--only", nargs="*", help="configuration names to run (default: all)")
    parser.add_argument("--limit-gib", type=float, default=16.0, help="kill a run above this RSS")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from services.client.model_import import import_model

    model_dir = import_model("smollm2-135m-instruct", home=REPO / ".tuneplex-test").path
    shape = ModelShape.from_config(json.loads((model_dir / "config.json").read_text()))
    host = DeviceInfo(
        cuda=False, gpu_count=0, memory_bytes=psutil.virtual_memory().total, name="cpu"
    )
    env = {
        **os.environ,
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    work = Path(tempfile.mkdtemp(prefix="tuneplex-memory-"))
    rows = []
    print(f"SmolLM2-135M, {args.steps} steps, {os.cpu_count()} CPUs, fp32 unless said otherwise")
    print(f"{'config':24} {'estimate GiB':>12} {'measured GiB':>12} {'ratio':>6} {'s':>5}")
    try:
        for name, fields in CONFIGS:
            if args.only and name not in args.only:
                continue
            config = TrainingConfig(
                base_model="smollm2-135m-instruct",
                dataset="bench",
                output_name="bench",
                max_steps=args.steps,
                save_steps=args.steps + 1,
                **fields,
            )
            seq, batch = config.max_seq_length, config.batch_size
            run_dir = work / name.replace(" ", "-")
            run_dir.mkdir()
            per_row = seq // 2 if config.packing else seq + 8
            per_step = batch * (2 if config.packing else 1)
            data = run_dir / "train.jsonl"
            data.write_text(
                "".join(json.dumps(c) + "\n" for c in chats(per_step * args.steps, per_row))
            )
            job = run_dir / "job.json"
            job.write_text(
                json.dumps(
                    {
                        "training": config.model_dump(mode="json"),
                        "model_dir": str(model_dir),
                        "train_file": str(data),
                    }
                )
            )
            cmd = [sys.executable, "-m", "services.trainer.recipes.sft", "--config", str(job)]
            started = time.monotonic()
            peak, killed, _ = peak_rss_of(
                cmd + ["--output", str(run_dir / "out")], env, int(args.limit_gib * GIB)
            )
            took = time.monotonic() - started
            estimate = estimate_memory(config, shape, host).peak_bytes
            measured = "over limit" if killed else f"{peak / GIB:12.2f}"
            ratio = "" if killed else f"{estimate / peak:6.2f}"
            print(f"{name:24} {estimate / GIB:12.2f} {measured:>12} {ratio:>6} {took:5.0f}")
            rows.append(
                {
                    "name": name,
                    "fields": fields,
                    "estimate_gib": round(estimate / GIB, 3),
                    "measured_gib": None if killed else round(peak / GIB, 3),
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
