"""Direct preference optimisation recipe: a LoRA adapter trained with TRL's ``DPOTrainer`` on
preference pairs.

    python -m services.trainer.recipes.dpo --config job.json --output DIR

1. data: each line of the registry's preference format (OpenAI's DPO JSONL: ``{"input":
   {"messages": [...]}, "preferred_output": [<assistant message>], "non_preferred_output":
   [<assistant message>]}``) becomes TRL's conversational preference row: ``prompt`` the input
   messages, ``chosen`` and ``rejected`` the one assistant message of each output. TRL renders
   them with the model's own chat template and trains on the answers' tokens only;
2. setup: tokenizer and base model with a PEFT LoRA adapter (``load_model``, as SFT). The
   reference model is the same weights with the adapter disabled (no ``ref_model``, and not the
   copy of the new adapter TRL would make: see ``build_dpo_trainer``), so there is no second
   copy of the weights;
3. train: the spec's Trainer arguments (those of SFT, ``sft_args``) plus ``beta`` and the
   truncation length; checkpoints, resume, stop requests, evaluation, early stopping, the report
   and the loss curve are SFT's (``common.fit``);
4. report and events: TRL's ``rewards/accuracies`` and ``rewards/margins`` as ``reward_accuracy``
   and ``reward_margin`` (``eval_`` before them on the validation set), so a user sees the
   adapter come to prefer the preferred answers.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from services.common.errors import InvalidArgument
from services.trainer.recipes.chat_data import read_jsonl, to_messages
from services.trainer.recipes.common import RecipeConfig, fit, load_model, recipe_main, sft_args
from services.trainer.recipes.report import PREFERENCE_METRICS
from services.trainer.recipes.sft import load_tokenizer
from services.trainer.recipes.trained_positions import score_trained_positions_only
from services.trainer.worker.protocol import emit

PREFERRED, NON_PREFERRED = "preferred_output", "non_preferred_output"


def _bad(message: str, param: str) -> InvalidArgument:
    return InvalidArgument(message, param=param, code="dataset_invalid")


def _answer(row: dict, key: str, n: int, param: str) -> dict:
    """The one assistant message of ``row[key]``."""
    value = row.get(key)
    if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)):
        raise _bad(f"example {n}: {key} must be a list of exactly one assistant message", param)
    if value[0].get("role") != "assistant":
        raise _bad(f"example {n}: the {key} message must have role 'assistant'", param)
    return value[0]


def preference_row(row: dict, n: int, param: str = "training.dataset") -> dict:
    """One preference line as TRL's conversational preference row (``prompt``, ``chosen``,
    ``rejected``), each message its role and content. The registry checks the format at upload;
    a file given by hand gets the same message rules as a chat (``to_messages``)."""
    source = row.get("input")
    if not isinstance(source, dict) or not isinstance(source.get("messages"), list):
        raise _bad(
            f'example {n} has no "input": {{"messages": [...]}}; write one JSON object per '
            'line like {"input": {"messages": [{"role": "user", "content": "..."}]}, '
            '"preferred_output": [{"role": "assistant", "content": "..."}], '
            '"non_preferred_output": [{"role": "assistant", "content": "..."}]}',
            param,
        )
    prompt = source["messages"]
    if not prompt or not isinstance(prompt[-1], dict) or prompt[-1].get("role") != "user":
        raise _bad(f"example {n}: input.messages must end with a user message", param)
    chosen = to_messages({"messages": [*prompt, _answer(row, PREFERRED, n, param)]}, n, param)
    rejected = to_messages({"messages": [*prompt, _answer(row, NON_PREFERRED, n, param)]}, n, param)
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise _bad(f"example {n}: {PREFERRED} and {NON_PREFERRED} are the same text", param)
    role_and_content = [{"role": m["role"], "content": m["content"]} for m in chosen]
    return {
        "prompt": role_and_content[:-1],
        "chosen": role_and_content[-1:],
        "rejected": [{"role": "assistant", "content": rejected[-1]["content"]}],
    }


def read_preference_file(path: Path, param: str = "training.dataset") -> list[dict]:
    return [preference_row(row, n, param) for n, row in enumerate(read_jsonl(path, param), 1)]


class PreferenceMetrics(TrainerCallback):
    """Renames TRL's reward metrics to tuneplex's in what the callbacks after it see (the
    events, TensorBoard), and sends the training ones as a metrics event each logged step; the
    validation ones travel with the eval event ``EventCallback`` sends. The Trainer's
    ``log_history`` keeps TRL's names (it is copied before the callbacks run)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        for trl_name, ours in PREFERENCE_METRICS.items():
            for prefix in ("", "eval_"):
                if prefix + trl_name in logs:
                    logs[prefix + ours] = logs.pop(prefix + trl_name)
        train = {name: float(logs[name]) for name in PREFERENCE_METRICS.values() if name in logs}
        if train and args.should_log:
            emit("eval", step=state.global_step, metrics=train)


def dpo_args(config: RecipeConfig, staging: Path, *, has_eval: bool, report_to: list[str] | None):
    """DPOConfig: SFT's Trainer arguments (one declaration of how the spec maps onto the
    Trainer), with DPO's own: ``beta``, and every sequence (prompt + answer) cut to
    max_seq_length, keeping the start as the chat does."""
    from dataclasses import fields

    from transformers import TrainingArguments
    from trl import DPOConfig

    t = config.training
    sft = sft_args(
        t,
        staging,
        has_eval=has_eval,
        packing=False,
        deepspeed=config.deepspeed_config,
        report_to=report_to,
    )
    trainer_args = {f.name: getattr(sft, f.name) for f in fields(TrainingArguments) if f.init}
    return DPOConfig(
        **trainer_args,
        beta=t.dpo_beta,
        max_length=t.max_seq_length,
        truncation_mode="keep_start",
        padding_free=False,
        # TRL turns dropout off by default; the spec's lora_dropout applies as it does in SFT.
        disable_dropout=False,
    )


def build_dpo_trainer(
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
    """The ``DPOTrainer`` the recipe trains with (``fit``'s ``build``): ``model`` is the PEFT
    model and there is no ``ref_model``: the reference is the base with the adapter disabled."""
    from datasets import Dataset
    from trl import DPOTrainer

    from services.trainer.recipes.common import make_optimizer

    assert not packing, "the spec refuses packing for dpo"
    score_trained_positions_only()  # TRL's fused LM head on the answers' tokens only, CPU too
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=dpo_args(config, staging, has_eval=bool(eval_rows), report_to=report_to),
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=[PreferenceMetrics(), *callbacks],
        optimizers=(make_optimizer(config.training, model), None),
    )
    # Given a PEFT model, TRL copies its adapter as a frozen "ref" adapter to score the
    # reference with. A new adapter starts as the base itself (LoRA's B is 0), so the copy adds
    # nothing but a second adapter to run and to save beside the output: without it TRL scores
    # the reference with the adapter disabled.
    if "ref" in trainer.model.peft_config:
        trainer.model.delete_adapter("ref")
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise InvalidArgument(
            f"every pair's prompt fills max_seq_length ({config.training.max_seq_length} "
            "tokens), leaving no answer token to compare; raise max_seq_length or shorten "
            "the prompts",
            param="training.hyperparameters.max_seq_length",
            code="dataset_invalid",
        )
    if kept < len(train_rows):
        emit(
            "log",
            message=f"{len(train_rows) - kept} of {len(train_rows)} pairs left out: their "
            f"prompt alone fills max_seq_length ({config.training.max_seq_length} tokens)",
        )
    return trainer


def run(config: RecipeConfig, output: Path) -> dict:
    """Train a LoRA adapter with DPO on a JSONL preference dataset."""
    t = config.training
    tokenizer = load_tokenizer(config.model_dir)
    train_rows = read_preference_file(config.train_file)
    eval_rows = None
    if config.eval_file:
        eval_rows = read_preference_file(config.eval_file, "training.validation_dataset")
    emit("log", message=f"{len(train_rows)} preference pairs; beta {t.dpo_beta}")
    model = load_model(t, config.model_dir)
    return fit(
        config,
        output,
        model,
        tokenizer,
        train_rows,
        eval_rows,
        packing=False,
        build=build_dpo_trainer,
    )


if __name__ == "__main__":
    recipe_main(run)
