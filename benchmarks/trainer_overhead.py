"""Training speed and overhead, measured side by side in one run.

1. ``speed`` (default): wall time of the same LoRA SFT (same examples seen, same
   hyper-parameters, the demo's mixed-length text-to-SQL chats, loss on assistant tokens) four
   ways: raw TRL ``SFTTrainer`` with its shipped defaults (bf16 autocast, gradient
   checkpointing, padded batches); raw TRL with fp32 and no checkpointing (what tuneplex ran
   before padding-free batches and its LM head on trained positions: the ``overhead`` part
   measured it at 1.00x); tuneplex with ``padding_free=false``; tuneplex's defaults. Wall time
   is the Trainer's own ``train_runtime`` (model loading and tokenization excluded alike); the
   final eval loss on 100 held-out chats says the speed costs no quality (aim: within 2% of raw
   TRL's, and >= 1.3x faster).
2. ``overhead``: tokens/s of a tuneplex job (the worker: registry pull, our tokenization and
   assistant masks, event callback, atomic checkpoints, registry push) vs the recipe's own
   Trainer run directly on the same data; both count non-padding input tokens over
   ``train_runtime``.
3. ``packing``: tokens/s of the SFT recipe with packing on vs off on mixed-length chats.

    .venv/bin/python benchmarks/trainer_overhead.py [--part speed|overhead|packing|all]
        [--steps 30] [--batch 4]

Needs the base model folder (``tuneplex models import smollm2-135m-instruct``); ``overhead``
starts its own registry on a loopback port. Each run is a fresh subprocess, so imports and model
loading are outside every measurement alike. Say which CPU it ran on (``lscpu``): bf16 is fast
only with AMX / AVX512-BF16.
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

# Metrics off: a benchmark's registry must not take the default metrics port (9090).
NO_REGISTRY_METRICS = {"TUNEPLEX_REGISTRY_METRICS_PORT": "0"}

# Raw TRL on pre-tokenized rows (input_ids + assistant_masks: TRL builds the labels from the
# mask itself), so both sides train on the same tokens. "shipped" keeps SFTConfig's defaults
# for precision and checkpointing; "fp32" turns both off, as tuneplex's CPU spec does.
DIRECT_TRL = """
import json, sys
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
import torch

cfg = json.load(open(sys.argv[1]))
load = lambda path: [json.loads(line) for line in open(path)]
tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
mode = {} if cfg["mode"] == "shipped" else {"bf16": False, "gradient_checkpointing": False}
args = SFTConfig(
    output_dir=cfg["out"], max_steps=cfg["steps"], per_device_train_batch_size=cfg["batch"],
    per_device_eval_batch_size=cfg["batch"], learning_rate=2e-4, max_length=cfg["seq"],
    logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
    seed=42, data_seed=42, warmup_steps=0.03, include_num_input_tokens_seen="non_padding",
    **mode,
)
peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                  task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(load(cfg["data"])),
                     processing_class=tokenizer, peft_config=peft)
out = trainer.train()
trainer.save_model(cfg["out"])
logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" in h]
# After the first step (its warm-up excluded); 0 with a single logged step.
steady = (logs[-1]["num_input_tokens_seen"] - logs[0]["num_input_tokens_seen"]) / (
    float(logs[-1]["train_runtime"]) - float(logs[0]["train_runtime"])) if len(logs) > 1 else 0.0
result = {"tokens_per_second": trainer.state.num_input_tokens_seen / out.metrics["train_runtime"],
          "steady_tokens_per_second": steady,
          "train_runtime_seconds": out.metrics["train_runtime"]}
print(json.dumps(result))
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
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--model", type=Path, default=None, help="base model folder")
    parser.add_argument("--part", choices=["all", "speed", "overhead", "packing"], default="speed")
    parser.add_argument(
        "--shipped",
        action="store_true",
        help="also time raw TRL with its shipped defaults (bf16 autocast, gradient "
        "checkpointing): ~10x slower on CPUs without AMX, so off unless asked",
    )
    args = parser.parse_args()

    from services.client.model_import import import_model

    model_dir = (
        args.model or import_model("smollm2-135m-instruct", home=REPO / ".tuneplex-test").path
    )
    work = Path(tempfile.mkdtemp(prefix="tuneplex-bench-"))
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
    print(f"SmolLM2-135M LoRA r16, {args.steps} steps x batch {args.batch}, {cpu_line()}")
    if args.part in ("all", "speed"):
        speed(args, config, model_dir, work, env)
    if args.part in ("all", "overhead"):
        data = write_jsonl(chat_examples(args.steps * args.batch, seed=3), work / "chats.jsonl")
        overhead(config, model_dir, data, work, env)
    if args.part in ("all", "packing"):
        packing(args, config, model_dir, work, env)
    shutil.rmtree(work, ignore_errors=True)


def cpu_line() -> str:
    flags = Path("/proc/cpuinfo").read_text()
    fast_bf16 = "amx_bf16" in flags or "avx512_bf16" in flags
    return f"{os.cpu_count()} CPUs, {'AMX/AVX512-BF16' if fast_bf16 else 'no AMX/AVX512-BF16'}"


def recipe(
    config: TrainingConfig, model_dir: Path, train: Path, work: Path, name: str, env: dict
) -> dict:
    """The SFT recipe run directly (``python -m services.trainer.recipes.sft``): its result;
    the adapter lands in ``work/name``."""
    path = work / f"{name}.json"
    job = {
        "training": config.model_dump(mode="json"),
        "model_dir": str(model_dir),
        "train_file": str(train),
        "checkpoint_dir": str(work / f"{name}-checkpoints"),
    }
    path.write_text(json.dumps(job))
    cmd = [
        sys.executable,
        "-m",
        "services.trainer.recipes.sft",
        "--config",
        str(path),
        "--output",
        str(work / name),
    ]
    (result,) = [e for e in run(cmd, env) if e["type"] == "result"]
    return result["metrics"]


def direct_trl(mode: str, args, model_dir: Path, rows: Path, work: Path, env: dict) -> dict:
    """Raw TRL (``DIRECT_TRL``): its result; the adapter lands in ``work/direct-<mode>``."""
    cfg = work / f"direct-{mode}.json"
    cfg.write_text(
        json.dumps(
            {
                "model": str(model_dir),
                "data": str(rows),
                "out": str(work / f"direct-{mode}"),
                "steps": args.steps,
                "batch": args.batch,
                "seq": args.seq,
                "mode": mode,
            }
        )
    )
    (result,) = [
        e for e in run([sys.executable, "-c", DIRECT_TRL, str(cfg)], env) if e["type"] == "result"
    ]
    return result["metrics"]


def pretokenized(chats: Path, tokenizer, seq: int) -> list[dict]:
    """The chats as tuneplex's recipe tokenizes them (chat template, assistant masks)."""
    from services.trainer.recipes.chat_data import tokenize_chat_file

    return tokenize_chat_file(chats, tokenizer, seq, False)


def eval_loss(model_dir: Path, adapter: Path, rows: list[dict], batch: int = 8) -> float:
    """Mean next-token loss on the assistant tokens of ``rows``, the same plain padded
    forward for every adapter, so no side is judged by its own code."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        width = max(len(r["input_ids"]) for r in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for j, r in enumerate(chunk):
            n = len(r["input_ids"])
            ids[j, :n] = torch.tensor(r["input_ids"])
            mask[j, :n] = 1
            labels[j, :n] = torch.tensor(
                [
                    t if m else -100
                    for t, m in zip(r["input_ids"], r["assistant_masks"], strict=True)
                ]
            )
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
        )
        total += losses.item()
        count += int((target != -100).sum())
    return total / count


def speed(args, config: TrainingConfig, model_dir: Path, work: Path, env: dict) -> None:
    from demo.shop_sql.generate import write_dataset

    data = work / "shop-sql"
    write_dataset(data, args.steps * args.batch, 100, 0)
    train = data / "train.jsonl"
    from services.trainer.recipes.sft import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    rows = write_jsonl(pretokenized(train, tokenizer, args.seq), work / "train-rows.jsonl")
    heldout = pretokenized(data / "heldout.jsonl", tokenizer, args.seq)
    # Every run sees the same steps x batch examples, once (the dataset is that size).
    save_at_end = {"save_steps": 1_000_000}
    runs = {
        "raw TRL, shipped defaults": lambda: direct_trl(
            "shipped", args, model_dir, rows, work, env
        ),
        "raw TRL, fp32 no checkpointing": lambda: direct_trl(
            "fp32", args, model_dir, rows, work, env
        ),
        "tuneplex, padding_free false": lambda: recipe(
            config.model_copy(update={"padding_free": False, **save_at_end}),
            model_dir,
            train,
            work,
            "tuneplex-padded",
            env,
        ),
        "tuneplex defaults": lambda: recipe(
            config.model_copy(update=save_at_end), model_dir, train, work, "tuneplex-defaults", env
        ),
    }
    adapters = ["direct-shipped", "direct-fp32", "tuneplex-padded", "tuneplex-defaults"]
    if not args.shipped:
        del runs["raw TRL, shipped defaults"]
        adapters.pop(0)
    results = {}
    for (name, go), folder in zip(runs.items(), adapters, strict=True):
        r = go()
        r["eval_loss"] = eval_loss(model_dir, work / folder, heldout)
        results[name] = r
        print(f"  ... {name}: {r['train_runtime_seconds']:.1f} s", flush=True)
    reference = results["raw TRL, fp32 no checkpointing"]
    print("the demo's text-to-SQL chats (mixed lengths), loss on assistant tokens:")
    print("                                  train s   speed-up   eval loss   vs raw TRL")
    for name, r in results.items():
        seconds = r["train_runtime_seconds"]
        ratio = reference["train_runtime_seconds"] / seconds
        drift = r["eval_loss"] / reference["eval_loss"] - 1
        print(
            f"  {name:30s}: {seconds:7.1f}   {ratio:7.2f}x   {r['eval_loss']:9.4f}   {drift:+8.2%}"
        )
    print(
        "  (against raw TRL with fp32 and no checkpointing, the previous tuneplex path; aim "
        ">= 1.3x faster, eval loss within 2%; eval loss on 100 held-out chats, one evaluator)"
    )


def overhead(config: TrainingConfig, model_dir: Path, data: Path, work: Path, env: dict) -> None:
    from services.client.registry import RegistryClient
    from tests.helpers.registry_process import start_registry

    py = sys.executable
    # The worker (through a real registry) vs the same recipe run directly.
    registry = start_registry(work / "registry", env=NO_REGISTRY_METRICS)
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
    direct = recipe(config, model_dir, data, work, "direct", env)
    direct_speed = (direct["tokens_per_second"], direct["steady_tokens_per_second"])
    print("platform overhead (capital-city chats):")
    print("                      whole run   after step 1  (tokens/s, non-padding)")
    print(f"  recipe run directly : {direct_speed[0]:9.1f}   {direct_speed[1]:12.1f}")
    print(f"  tuneplex worker     : {tuneplex[0]:9.1f}   {tuneplex[1]:12.1f}")
    print(
        f"  ratio               : {tuneplex[0] / direct_speed[0]:8.2f}x"
        f"   {tuneplex[1] / direct_speed[1]:11.2f}x  (aim >= 0.95x)"
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
