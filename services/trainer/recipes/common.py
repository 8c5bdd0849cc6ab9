"""What every recipe shares: its config file, model loading, atomic checkpoints, the training
report and the loss curve. Events go to the service through ``worker.protocol.emit``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from services.common.errors import TuneplexError
from services.trainer.checkpoints import (
    checkpoint_at,
    checkpoint_path,
    clear_staging,
    commit_checkpoint,
    latest_checkpoint,
)
from services.trainer.device import training_threads
from services.trainer.recipes.report import published_weights, write_report
from services.trainer.recipes.tracking import RUNS_DIR, choose_trackers
from services.trainer.recipes.trained_positions import score_trained_positions_only
from services.trainer.spec import TrainingConfig, ia3_feedforward_modules
from services.trainer.worker.protocol import EXIT_PAUSED, emit, exit_for


class RecipeConfig(BaseModel):
    """A recipe's input: the validated spec and local files (the worker fills these in from the
    registry; by hand they are any HF model folder and JSONL files)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    training: TrainingConfig
    model_dir: Path
    train_file: Path
    eval_file: Path | None = None
    # Checkpoints live beside the output folder unless set; resume picks the newest complete one.
    checkpoint_dir: Path | None = None
    # DeepSpeed ZeRO config of a multi-GPU launch (written by the local runner).
    deepspeed_config: Path | None = None
    report: dict = {}

    def checkpoints(self, output: Path) -> Path:
        return self.checkpoint_dir or output.with_name(output.name + "-checkpoints")


def recipe_main(run, config_class=None) -> None:
    """``python -m services.trainer.recipes.<name> --config job.json --output DIR``; the JSON is
    a ``RecipeConfig`` unless the recipe names its own config class."""
    config_class = config_class or RecipeConfig
    parser = argparse.ArgumentParser(description=run.__doc__)
    parser.add_argument(
        "--config", type=Path, required=True, help=f"{config_class.__name__} JSON file"
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for the result")
    args = parser.parse_args()
    config = config_class.model_validate_json(args.config.read_text())
    try:
        run(config, args.output)
    except TuneplexError as exc:
        exit_for(exc)


def torch_dtype(config: TrainingConfig):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]


def attention_implementation(config: TrainingConfig) -> str:
    """flash-attention 2 on CUDA when it is installed and the weights are half precision (its
    varlen kernel takes padding-free batches as they are); else PyTorch's sdpa, for which
    transformers builds a block-diagonal causal mask from the restarting position ids."""
    import importlib.util

    import torch

    if (
        config.num_gpus > 0
        and torch.cuda.is_available()
        and config.precision in ("bf16", "fp16")
        and importlib.util.find_spec("flash_attn") is not None
    ):
        return "flash_attention_2"
    return "sdpa"


def load_model(config: TrainingConfig, model_dir: Path):
    """The base model in the spec's precision (4-bit NF4 for qlora), wrapped in PEFT for
    adapters (``peft_config``)."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch_dtype(config), "attn_implementation": attention_implementation(config)}
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if config.num_gpus == 1 and torch.cuda.is_available():
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if not config.is_adapter:
        return model
    if config.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    return get_peft_model(model, peft_config(config))


def peft_config(config: TrainingConfig):
    """The PEFT config of an adapter method: LoRA (DoRA, rsLoRA; qlora, dpo and continued
    pretraining train LoRA too), IA3, LoHa or LoKr. PEFT resolves all-linear itself for each
    (every linear layer but the output head)."""
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig

    targets = "all-linear" if "all-linear" in config.target_modules else list(config.target_modules)
    if config.method == "ia3":
        return IA3Config(
            target_modules=targets,
            feedforward_modules=list(ia3_feedforward_modules(config.target_modules)),
            task_type="CAUSAL_LM",
        )
    if config.method in ("loha", "lokr"):
        # lora_dropout is the rank dropout (rows of the weight update dropped, the rest
        # rescaled): the dropout inside the adapter, as LoRA's is. PEFT's module dropout, which
        # skips a whole adapted module at a time, stays off.
        adapter_class = LoHaConfig if config.method == "loha" else LoKrConfig
        return adapter_class(
            r=config.lora_r,
            alpha=config.lora_alpha,
            rank_dropout=config.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        use_rslora=config.use_rslora,
        use_dora=config.method == "dora",
        task_type="CAUSAL_LM",
    )


def make_optimizer(config: TrainingConfig, model):
    """LoRA+ (B learns ``ratio`` times faster than A) when asked; else the Trainer's AdamW."""
    if not (config.is_adapter and config.loraplus_lr_ratio):
        return None
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=config.learning_rate,
        loraplus_lr_ratio=config.loraplus_lr_ratio,
        weight_decay=config.weight_decay,
    )


def sft_args(
    config: TrainingConfig,
    staging: Path,
    *,
    has_eval: bool,
    packing: bool,
    deepspeed: Path | None = None,
    report_to: list[str] | None = None,
):
    """SFTConfig from the spec. ``staging`` receives checkpoints before their atomic commit.

    Settings named as in TRL (``learning_rate``, ``seed``, ``weight_decay``, ...) pass through
    by name, so a new one of those needs no line here; the rest are spelled out because TRL
    names them differently or reads their zero differently."""
    from dataclasses import fields

    from trl import SFTConfig

    same_name = {f.name for f in fields(SFTConfig)} & set(type(config).model_fields)
    by_name = {name: getattr(config, name) for name in same_name}
    eval_strategy = ("steps" if config.eval_steps else "epoch") if has_eval else "no"
    keep_best = bool(config.early_stopping_patience) and has_eval
    spelled_out = dict(
        output_dir=str(staging),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of total steps
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        # TRL truncates only padded batches; ``chat_data.truncate_examples`` has cut every
        # example already, and packing needs the length as its bin size.
        max_length=config.max_seq_length if packing or not config.padding_free else None,
        packing=packing,  # the recipe decides (continued pretraining packs by itself)
        neftune_noise_alpha=config.neftune_noise_alpha or None,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        data_seed=config.seed,
        eval_strategy=eval_strategy,
        eval_steps=config.eval_steps or None,
        # Early stopping publishes the best evaluated weights, so each evaluation is also a
        # checkpoint (transformers refuses ``load_best_model_at_end`` otherwise, and an eval step
        # without one could not be loaded); the Trainer loads the best at the end.
        save_strategy=eval_strategy if keep_best else "steps",
        save_steps=(config.eval_steps or config.save_steps) if keep_best else config.save_steps,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        logging_steps=1,
        logging_first_step=True,
        # Padding-free and packed batches hold no padding, and their pad id is often the EOS
        # id, which "non_padding" would leave out; padded batches count their attention mask.
        include_num_input_tokens_seen="all" if config.padding_free or packing else "non_padding",
        # TensorBoard is not among these: ``TensorBoardEvents`` writes into the output folder.
        report_to=report_to or [],
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=config.num_gpus == 0,
        deepspeed=str(deepspeed) if deepspeed else None,
        # Our own callback commits checkpoints atomically; the Trainer's rotation would race it.
        # Every checkpoint is kept, so the best one is there to load.
        save_total_limit=None,
    )
    return SFTConfig(**(by_name | spelled_out))


class EventCallback(TrainerCallback):
    """Turns Trainer logs into progress/eval events; commits checkpoints atomically; honours a
    stop request (SIGTERM: PauseJob, cancel, the service stopping) during training by saving
    a checkpoint at the end of the current step and ending training there (``stop_if_asked``
    then exits ``EXIT_PAUSED``). Outside training SIGTERM ends the worker as before."""

    def __init__(self, staging: Path, checkpoint_dir: Path):
        self.staging, self.checkpoint_dir = staging, checkpoint_dir
        self.started = time.monotonic()
        self.first_step = 0
        self.first_tokens = 0
        self.stop_asked = False  # SIGTERM arrived during training
        self.stopped_at: int | None = None  # the step training stopped at for it
        self._default_sigterm: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        self.first_step = state.global_step
        self.first_tokens = state.num_input_tokens_seen
        # A resumed state names the best checkpoint in the staging folder, which is gone.
        self.point_at_best(args, state)
        self._default_sigterm = signal.signal(signal.SIGTERM, self._ask_to_stop)
        emit("state", state="RUNNING", message=f"training from step {state.global_step}")

    def _ask_to_stop(self, signum, frame) -> None:
        # Only a flag: printing here could re-enter a print the signal interrupted.
        self.stop_asked = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is None and stop_agreed(args, self.stop_asked):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            emit("log", message=f"stop requested: saving a checkpoint at step {state.global_step}")

    def on_train_end(self, args, state, control, **kwargs):
        if self._default_sigterm is not None:
            signal.signal(signal.SIGTERM, self._default_sigterm)
            self._default_sigterm = None
        if self.stop_asked and self.stopped_at is None:
            # Asked after the last step's end (during its save or the final evaluation): no
            # step is left to stop at, so the request takes effect as it would have outside
            # training, rather than the worker going on to publish a cancelled job.
            os.kill(os.getpid(), signal.SIGTERM)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not args.should_log or not logs:
            return
        if "loss" in logs:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            done = state.global_step - self.first_step
            eta = elapsed / done * (state.max_steps - state.global_step) if done else 0.0
            emit(
                "progress",
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=state.epoch or 0.0,
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate", 0.0),
                grad_norm=logs.get("grad_norm", 0.0),
                tokens_per_second=(state.num_input_tokens_seen - self.first_tokens) / elapsed,
                eta_seconds=eta,
                # The Trainer keeps the count in its checkpointed state: it goes on after resume.
                trained_tokens=state.num_input_tokens_seen,
            )
        evals = {k: float(v) for k, v in logs.items() if k.startswith("eval_")}
        if evals:
            emit("eval", step=state.global_step, metrics=evals)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            staged = self.staging / f"checkpoint-{state.global_step}"
            final = commit_checkpoint(staged, self.checkpoint_dir)
            size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
            emit("checkpoint", step=state.global_step, size_bytes=size)
        self.point_at_best(args, state)

    def point_at_best(self, args, state) -> None:
        """transformers records the best checkpoint where it wrote it, in the staging folder
        that ``on_save`` empties; ``load_best_model_at_end`` must find our committed copy. Every
        rank points there: under DeepSpeed each rank loads it."""
        if args.load_best_model_at_end and state.best_global_step:
            state.best_model_checkpoint = str(
                checkpoint_path(self.checkpoint_dir, state.best_global_step)
            )


def stop_agreed(args, asked: bool) -> bool:
    """Whether any rank was asked to stop: under torchrun every rank must end training at the
    same step (saving and the next step are collective), so the flag is all-reduced."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return asked
    import torch

    flag = torch.tensor([int(asked)], device=args.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def stop_if_asked(events: EventCallback) -> None:
    """After ``trainer.train()``: end the worker with ``EXIT_PAUSED`` when training stopped for
    a stop request (its checkpoint is committed; the next attempt resumes from it)."""
    if events.stopped_at is not None:
        emit("log", message=f"stopped at step {events.stopped_at} with a checkpoint")
        sys.exit(EXIT_PAUSED)


class TensorBoardEvents(TensorBoardCallback):
    """TensorBoard event files in ``log_dir`` (transformers 5 puts them under the Trainer's
    ``output_dir``, our checkpoint staging folder, which is never published).

    A resumed attempt writes a new event file in the same folder, opened with ``purge_step``:
    TensorBoard then hides what the killed attempt logged after its last checkpoint, so the
    curve has each step once. The Trainer's arguments and model config are not written as text
    (the stock callback does): they hold the worker's local paths, and the hyper-parameters are
    in ``training_report.json``."""

    tb_writer: Any  # the SummaryWriter, set by the base class (transformers is not type-checked)

    def __init__(self, log_dir: Path):
        super().__init__()
        self.logging_dir = str(log_dir)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.tb_writer is None:
            purge = state.global_step + 1 if state.global_step else None
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=purge)


def prepare_checkpoints(checkpoint_dir: Path) -> tuple[Path, str | None]:
    """The staging folder (emptied) and the checkpoint to resume from, if any."""
    staging = checkpoint_dir / "_staging"
    clear_staging(staging)
    last = latest_checkpoint(checkpoint_dir)
    if last:
        emit("log", message=f"resuming from checkpoint at step {last.step}")
    return staging, str(last.path) if last else None


def use_training_threads() -> dict[str, Any]:
    """Set this process's torch threads for training (``device.training_threads``); returns
    the report's entry."""
    import torch

    threads, because = training_threads()
    torch.set_num_threads(threads)
    return {"value": threads, "because": because}


def runtime_choices(config: TrainingConfig, model, *, packing: bool) -> dict[str, Any]:
    """What this run trains with and why, for the report's ``runtime`` (each a default the
    trainer picked unless the spec set it)."""
    if packing:
        batching = "packed (best-fit decreasing), position ids restart per example"
    elif config.padding_free:
        batching = "padding-free: examples end to end, position ids restart per example"
    else:
        batching = "padded to the longest example of each batch (padding_free false)"
    return {
        "precision": config.precision,
        "attention": getattr(model.config, "_attn_implementation", None) or "sdpa",
        "batching": batching,
        "lm_head": "trained positions only (labels != -100), tiled, no full logits",
        "gradient_checkpointing": config.gradient_checkpointing,
    }


def build_trainer(
    config: RecipeConfig,
    model,
    tokenizer,
    train_rows: list[dict],
    eval_rows: list[dict] | None,
    *,
    packing: bool,
    staging: Path,
    callbacks: list,
    report_to: list[str] | None = None,
):
    """The ``SFTTrainer`` a recipe trains with: the spec's arguments, tuneplex's batching and
    its LM head on trained positions only. Tests build it too, to check those numbers."""
    from datasets import Dataset
    from trl import SFTTrainer

    score_trained_positions_only()
    t = config.training
    return SFTTrainer(
        model=model,
        args=sft_args(
            t,
            staging,
            has_eval=bool(eval_rows),
            packing=packing,
            deepspeed=config.deepspeed_config,
            report_to=report_to,
        ),
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=(make_optimizer(t, model), None),
    )


def fit(
    config: RecipeConfig,
    output: Path,
    model,
    tokenizer,
    train_rows: list[dict],
    eval_rows: list[dict] | None,
    *,
    packing: bool,
    build=build_trainer,
) -> dict:
    """Train from the newest complete checkpoint, save, report. ``build`` makes the trainer
    (``build_trainer``'s arguments): TRL's SFTTrainer, or the DPO recipe's DPOTrainer."""
    from transformers import EarlyStoppingCallback

    started = time.monotonic()
    t = config.training
    checkpoint_dir = config.checkpoints(output)
    staging, resume = prepare_checkpoints(checkpoint_dir)
    events = EventCallback(staging, checkpoint_dir)
    trackers = choose_trackers(os.environ, wandb_dir=output.with_name(output.name + "-wandb"))
    for key, value in trackers.env_defaults.items():
        os.environ.setdefault(key, value)  # read by the W&B callback, in this worker process
    if "WANDB_DIR" in trackers.env_defaults:
        Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    emit("log", message=trackers.message)
    callbacks: list = [events, TensorBoardEvents(output / RUNS_DIR)]
    if t.early_stopping_patience and eval_rows:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    runtime = {"threads": use_training_threads()} if t.num_gpus == 0 else {}
    runtime |= runtime_choices(t, model, packing=packing)
    emit(
        "log", message="training with " + "; ".join(f"{k}: {_shown(v)}" for k, v in runtime.items())
    )
    trainer = build(
        config,
        model,
        tokenizer,
        train_rows,
        eval_rows,
        packing=packing,
        staging=staging,
        callbacks=callbacks,
        report_to=trackers.report_to,
    )
    train_output = trainer.train(resume_from_checkpoint=resume)
    stop_if_asked(events)
    best_step = loaded_best_step(trainer, checkpoint_dir)
    evaluated = any("eval_loss" in h for h in trainer.state.log_history[-3:])
    if eval_rows and best_step is None and not evaluated:
        trainer.evaluate()  # the report's eval loss is that of the published weights
    output.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(output))
    tokenizer.save_pretrained(str(output))
    # A pickle: the registry refuses it, and nothing downstream needs the Trainer's arguments.
    (output / "training_args.bin").unlink(missing_ok=True)
    name_base_model(output, config.model_dir, config.report.get("base_model", ""))
    tokens = trainer.state.num_input_tokens_seen - events.first_tokens
    report = write_report(
        config,
        output,
        trainer,
        train_output,
        tokens_seen=tokens,
        started=started,
        first_step=events.first_step,
        choices=runtime,
        published=published_weights(
            trainer.state, best_step=best_step, patience=t.early_stopping_patience
        ),
    )
    emit("result", metrics=report["metrics"])
    return report


def loaded_best_step(trainer, checkpoint_dir: Path) -> int | None:
    """The step of the checkpoint the Trainer loaded back at the end of training (early
    stopping's best eval loss), or None when the model holds the last step's weights."""
    state = trainer.state
    if not (trainer.args.load_best_model_at_end and state.best_global_step):
        return None
    best = checkpoint_at(checkpoint_dir, state.best_global_step)
    # transformers skips the load, with only a warning, when the folder is missing.
    return best.step if best and str(best.path) == state.best_model_checkpoint else None


def _shown(value: Any) -> str:
    return f"{value['value']} ({value['because']})" if isinstance(value, dict) else str(value)


def name_base_model(output: Path, local_dir: Path, ref: str) -> None:
    """Replace the worker's local cache path of the base model by its registry ref in what PEFT
    and transformers save (``adapter_config.json``, the model card): users downloading the
    version see ``smollm2-135m-instruct@1``, never a folder of the machine that trained it.
    A recipe run by hand (no ref) keeps the path it was given."""
    if not ref:
        return
    local = str(local_dir)
    adapter_config = output / "adapter_config.json"
    if adapter_config.is_file():
        data = json.loads(adapter_config.read_text())
        if data.get("base_model_name_or_path") == local:
            data["base_model_name_or_path"] = ref
            adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for name in ("README.md", "config.json"):
        path = output / name
        if path.is_file() and local in (text := path.read_text()):
            path.write_text(text.replace(local, ref))
