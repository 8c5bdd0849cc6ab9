"""Export cost, measured side by side in one run: merging an adapter into its base model vs just
loading and saving the base model (the I/O any export pays).

1. baseline: load the base (fp32), cast to bf16, save safetensors + tokenizer;
2. export: the export recipe (``python -m services.trainer.recipes.export``) on the same base
   with a rank-16 LoRA adapter on every linear module: load fp32, ``PeftModel.from_pretrained``,
   ``merge_and_unload(safe_merge=True)``, finiteness check, cast to bf16, save the same files.

Each side runs in a fresh subprocess, alternating for ``--rounds``, so imports are outside the
timings and peak RSS (``ru_maxrss``) is per side. Prints seconds and peak RSS of each and the
ratio export / baseline: merging should cost little beyond I/O.

    .venv/bin/python benchmarks/export.py [--rounds 2]

Needs the base model folder (``tuneplex models import smollm2-135m-instruct``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.trainer.export_spec import ExportConfig  # noqa: E402
from services.trainer.worker.protocol import EVENT_PREFIX  # noqa: E402

BASELINE = """
import json, resource, sys, time
import peft, torch  # the export imports these too: same resident libraries on both sides
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, out = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
t1 = time.monotonic()
model = model.to(torch.bfloat16)
model.save_pretrained(out, max_shard_size="2GB")
AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
t2 = time.monotonic()
print(json.dumps({"load": t1 - t0, "save": t2 - t1, "total": t2 - t0,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run_baseline(model_dir: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-c", BASELINE, str(model_dir), str(out)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_export(config_path: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "services.trainer.recipes.export", "--config", str(config_path),
         "--output", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )
    events = [json.loads(line[len(EVENT_PREFIX):]) for line in result.stdout.splitlines()
              if line.startswith(EVENT_PREFIX)]
    metrics = next((e["metrics"] for e in events if e["type"] == "result"), None)
    if result.returncode or metrics is None:
        raise RuntimeError(f"export failed ({result.returncode}):\n{result.stderr[-3000:]}")
    load, merge = metrics["load_seconds"], metrics["merge_seconds"]
    save = metrics["cast_check_and_save_seconds"]
    return {"load": load, "merge": merge, "save": save, "total": load + merge + save,
            "peak_rss": metrics["peak_memory_bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model-dir", type=Path,
                        default=REPO / ".tuneplex-test" / "models" / "smollm2-135m-instruct")
    args = parser.parse_args()
    if not (args.model_dir / "config.json").is_file():
        sys.exit(f"no base model at {args.model_dir}: `tuneplex models import "
                 "smollm2-135m-instruct` (or run the tests once)")
    from tests.helpers.lora import make_lora_adapter

    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    with tempfile.TemporaryDirectory(prefix="tuneplex-export-bench-") as tmp:
        root = Path(tmp)
        adapter = make_lora_adapter(args.model_dir, root / "adapter", seed=1, rank=16,
                                    targets=targets)
        config = root / "job.json"
        config.write_text(json.dumps({
            "export": ExportConfig(adapter="bench-lora@1", output_name="bench-merged",
                                   base_model="base@1").model_dump(mode="json"),
            "adapter_dir": str(adapter), "model_dir": str(args.model_dir),
        }))
        baseline, export = [], []
        for i in range(args.rounds):
            baseline.append(run_baseline(args.model_dir, root / "baseline-out"))
            export.append(run_export(config, root / "export-out"))
            print(f"round {i + 1}: baseline {baseline[-1]['total']:.2f} s, "
                  f"export {export[-1]['total']:.2f} s", flush=True)
        size = sum(p.stat().st_size for p in (root / "export-out").glob("*.safetensors"))

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    gib = 2**30
    print(f"\nbase model {args.model_dir.name}, merged output {size / 2**20:.0f} MiB (bf16); "
          f"median of {args.rounds} rounds")
    print(f"{'':24}{'seconds':>10}{'peak RSS GiB':>14}")
    print(f"{'load + save (baseline)':24}{med(baseline, 'total'):>10.2f}"
          f"{med(baseline, 'peak_rss') / gib:>14.2f}   (load {med(baseline, 'load'):.2f}, "
          f"save {med(baseline, 'save'):.2f})")
    print(f"{'export (merge)':24}{med(export, 'total'):>10.2f}"
          f"{med(export, 'peak_rss') / gib:>14.2f}   (load {med(export, 'load'):.2f}, "
          f"merge {med(export, 'merge'):.2f}, cast+check+save {med(export, 'save'):.2f})")
    print(f"ratio export / baseline: time {med(export, 'total') / med(baseline, 'total'):.2f}x, "
          f"peak RSS {med(export, 'peak_rss') / med(baseline, 'peak_rss'):.2f}x")


if __name__ == "__main__":
    main()
