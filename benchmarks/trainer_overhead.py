"""Trainer overhead and packing, measured side by side in one run.

1. tokens/s of a tuneplex job (the worker: registry pull, our tokenization and assistant masks,
   event callback, atomic checkpoints, registry push) vs the same TRL ``SFTTrainer`` script run
   directly on the same data with the same hyper-parameters. Both count non-padding input tokens
   over the Trainer's own ``train_runtime``; aim >= 0.95x.
2. tokens/s of the SFT recipe with packing on vs off on mixed-length chats.

    .venv/bin/python benchmarks/trainer_overhead.py [--steps 10] [--batch 4]

Needs the base model folder (``tuneplex models import smollm2-135m-instruct``); starts its own
registry on a loopback port. Each run is a fresh subprocess, so imports and model loading are
outside every measurement alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.trainer.spec import TrainingConfig  # noqa: E402
from services.trainer.worker.protocol import EVENT_PREFIX  # noqa: E402
from tests.helpers.sample_data import chat_examples, write_jsonl  # noqa: E402

DIRECT_TRL = """
import json, sys
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
import torch

cfg = json.load(open(sys.argv[1]))
rows = [json.loads(line) for line in open(cfg["data"])]
tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
args = SFTConfig(
    output_dir=cfg["out"], max_steps=cfg["steps"], per_device_train_batch_size=cfg["batch"],
    learning_rate=2e-4, max_length=cfg["seq"], logging_steps=1, save_strategy="no",
    report_to=[], disable_tqdm=True, use_cpu=True, seed=42, data_seed=42, warmup_steps=0.03,
    # TRL's own defaults differ from the spec's CPU defaults: bf16 autocast (~3x slower on
    # AVX2 CPUs) and gradient checkpointing. The same config means turning both off here.
    bf16=False, gradient_checkpointing=False,
    include_num_input_tokens_seen="non_padding",
)
peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                  task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                     processing_class=tokenizer, peft_config=peft)
out = trainer.train()
logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" in h]
steady = (logs[-1]["num_input_tokens_seen"] - logs[0]["num_input_tokens_seen"]) / (
    float(logs[-1]["train_runtime"]) - float(logs[0]["train_runtime"]))
print(json.dumps({"tokens_per_second":
                  trainer.state.num_input_tokens_seen / out.metrics["train_runtime"],
                  "steady_tokens_per_second": steady}))
"""


def run(cmd: list[str], env: dict | None = None) -> list[dict]:
    proc = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **(env or {})}, text=True, capture_output=True
    )
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    events = []
    for line in proc.stdout.splitlines():
        if line.startswith(EVENT_PREFIX):
            events.append(json.loads(line[len(EVENT_PREFIX) :]))
        elif line.startswith('{"tokens_per_second"'):
            events.append({"type": "result", "metrics": json.loads(line)})
    return events


def tokens_per_second(events: list[dict]) -> tuple[float, float]:
    """(over the whole run, after the first step) from the run's result."""
    (result,) = [e for e in events if e["type"] == "result"]
    return result["metrics"]["tokens_per_second"], result["metrics"]["steady_tokens_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--model", type=Path, default=None, help="base model folder")
    parser.add_argument("--part", choices=["all", "overhead", "packing"], default="all")
    args = parser.parse_args()

    from services.client.model_import import import_model

    model_dir = (
        args.model or import_model("smollm2-135m-instruct", home=REPO / ".tuneplex-test").path
    )
    work = Path(tempfile.mkdtemp(prefix="tuneplex-bench-"))
    data = write_jsonl(chat_examples(args.steps * args.batch, seed=3), work / "chats.jsonl")
    config = TrainingConfig(
        base_model="smollm2-135m-instruct",
        dataset="bench-chats",
        output_name="bench-lora",
        max_steps=args.steps,
        batch_size=args.batch,
        max_seq_length=args.seq,
        save_steps=args.steps,
    )
    env = {
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }

    if args.part in ("all", "overhead"):
        overhead(args, config, model_dir, data, work, env)
    if args.part in ("all", "packing"):
        packing(args, config, model_dir, work, env)
    shutil.rmtree(work, ignore_errors=True)


def overhead(
    args, config: TrainingConfig, model_dir: Path, data: Path, work: Path, env: dict
) -> None:
    from services.client.registry import RegistryClient
    from tests.helpers.registry_process import start_registry

    py = sys.executable
    # 1. tuneplex worker (through a real registry) vs the direct TRL script.
    registry = start_registry(work / "registry")
    try:
        with RegistryClient(registry.target) as client:
            client.push("model", "smollm2-135m-instruct", model_dir)
            client.push("dataset", "bench-chats", data)
        job_dir = work / "job"
        job_dir.mkdir()
        (job_dir / "worker.json").write_text(
            json.dumps(
                {
                    "job_id": "job-bench",
                    "training": config.model_dump(mode="json"),
                    "registry_target": registry.target,
                    "cache_dir": str(work / "cache"),
                }
            )
        )
        tuneplex = tokens_per_second(
            run([py, "-m", "services.trainer.worker", "--job-dir", str(job_dir)], env)
        )
    finally:
        registry.stop()
    direct_cfg = work / "direct.json"
    direct_cfg.write_text(
        json.dumps(
            {
                "model": str(model_dir),
                "data": str(data),
                "out": str(work / "direct"),
                "steps": args.steps,
                "batch": args.batch,
                "seq": args.seq,
            }
        )
    )
    direct = tokens_per_second(run([py, "-c", DIRECT_TRL, str(direct_cfg)], env))
    print(f"LoRA SFT, {args.steps} steps x batch {args.batch}, SmolLM2-135M, {os.cpu_count()} CPUs")
    print("                      whole run   after step 1  (tokens/s, non-padding)")
    print(f"  direct TRL script : {direct[0]:9.1f}   {direct[1]:12.1f}")
    print(f"  tuneplex worker   : {tuneplex[0]:9.1f}   {tuneplex[1]:12.1f}")
    print(
        f"  ratio             : {tuneplex[0] / direct[0]:8.2f}x   {tuneplex[1] / direct[1]:11.2f}x"
        "  (aim >= 0.95x)"
    )


def packing(args, config: TrainingConfig, model_dir: Path, work: Path, env: dict) -> None:
    py = sys.executable
    # 2. packing on vs off, mixed lengths (every 4th chat has a long preamble).
    mixed = write_jsonl(
        chat_examples(args.steps * args.batch * 4, seed=4, long_every=4), work / "mixed.jsonl"
    )
    speeds = {}
    for packed in (False, True):
        cfg = config.model_copy(update={"packing": packed})
        path = work / f"packing-{packed}.json"
        path.write_text(
            json.dumps(
                {
                    "training": cfg.model_dump(mode="json"),
                    "model_dir": str(model_dir),
                    "train_file": str(mixed),
                }
            )
        )
        speeds[packed] = tokens_per_second(
            run(
                [
                    py,
                    "-m",
                    "services.trainer.recipes.sft",
                    "--config",
                    str(path),
                    "--output",
                    str(work / f"out-packing-{packed}"),
                ],
                env,
            )
        )
    print(f"packing on mixed-length chats (seq {args.seq}):")
    print("                      whole run   after step 1  (tokens/s, non-padding)")
    print(f"  packing off       : {speeds[False][0]:9.1f}   {speeds[False][1]:12.1f}")
    print(f"  packing on        : {speeds[True][0]:9.1f}   {speeds[True][1]:12.1f}")
    print(
        f"  ratio             : {speeds[True][0] / speeds[False][0]:8.2f}x"
        f"   {speeds[True][1] / speeds[False][1]:11.2f}x"
    )


if __name__ == "__main__":
    main()
