"""`tuneplex jobs create` takes one flag per training setting, built from the declaration: the
README's command line gives exactly the spec it always gave, and every setting is reachable."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from services.client.cli.app import app as tuneplex
from services.client.cli.spec_options import parameter_name, with_spec_options
from services.common.stubs import trainer_pb2
from services.common.training_spec import SETTINGS
from services.common.training_spec_proto import spec_from_values

seen: list[tuple[dict, dict]] = []
probe = typer.Typer()


@probe.command()
@with_spec_options
def create(settings: dict, watch_: bool = typer.Option(False, "--watch")) -> None:
    seen.append((settings, {"watch": watch_}))


def parse(*argv: str) -> tuple[dict, dict]:
    seen.clear()
    result = CliRunner().invoke(probe, list(argv))
    assert result.exit_code == 0, result.output
    return seen[-1]


def test_the_readme_command_line_gives_the_spec_it_always_gave():
    settings, own = parse(
        "--dataset", "shop-sql", "--output", "sql-lora", "--max-steps", "60", "--lr", "1e-3",
        "--watch",
    )  # fmt: skip
    assert own == {"watch": True}
    assert settings == {
        "base_model": "smollm2-135m-instruct",
        "dataset": "shop-sql",
        "output_name": "sql-lora",
        "max_steps": 60,
        "learning_rate": 1e-3,
    }
    spec = spec_from_values(settings)
    assert spec == trainer_pb2.TrainingSpec(
        base_model="smollm2-135m-instruct",
        dataset="shop-sql",
        output_name="sql-lora",
        hyperparameters=trainer_pb2.Hyperparameters(max_steps=60, learning_rate=1e-3),
    )


def test_the_older_short_flags_and_the_new_ones_reach_their_settings():
    settings, _ = parse(
        "--dataset", "d", "-o", "x", "-r", "8", "--alpha", "4", "--packing", "--seed", "0",
        "--precision", "bf16", "--target-modules", "q_proj", "--target-modules", "v_proj",
        "--weight-decay", "0.01", "--lr-scheduler", "cosine", "--no-train-on-prompt",
    )  # fmt: skip
    assert settings["lora_r"] == 8 and settings["lora_alpha"] == 4.0
    assert settings["packing"] is True and settings["train_on_prompt"] is False
    assert settings["seed"] == 0 and settings["precision"] == "bf16"
    assert settings["target_modules"] == ["q_proj", "v_proj"]
    assert (settings["weight_decay"], settings["lr_scheduler"]) == (0.01, "cosine")
    assert spec_from_values(settings).hyperparameters.HasField("seed")


def test_every_setting_has_a_flag():
    command = typer.main.get_command(tuneplex).commands["jobs"].commands["create"]
    names = {p.name for p in command.params}
    assert {parameter_name(n) for n in SETTINGS} <= names


def test_a_choice_outside_the_declaration_is_a_usage_error():
    result = CliRunner().invoke(probe, ["--dataset", "d", "-o", "x", "--method", "sft"])
    assert result.exit_code == 2 and "lora" in result.output


def test_the_issue_18_settings_are_flags_and_num_gpus_0_reaches_the_wire_as_a_value():
    settings, _ = parse(
        "--dataset", "d", "-o", "x", "--num-gpus", "0", "--lora-dropout", "0",
        "--target-modules", "q_proj", "--use-rslora", "--loraplus-lr-ratio", "16",
        "--neftune-noise-alpha", "5", "--gradient-checkpointing", "--packing",
        "--validation-dataset", "d-val", "--early-stopping-patience", "3",
    )  # fmt: skip
    spec = spec_from_values(settings)
    assert spec.HasField("num_gpus") and spec.num_gpus == 0  # the CPU, not "all GPUs"
    assert spec.lora.HasField("dropout") and spec.lora.dropout == 0
    assert list(spec.lora.target_modules) == ["q_proj"] and spec.lora.use_rslora
    assert spec.lora.loraplus_lr_ratio == 16
    hp = spec.hyperparameters
    assert (hp.neftune_noise_alpha, hp.gradient_checkpointing, hp.packing) == (5, True, True)
    assert (spec.validation_dataset, hp.early_stopping_patience) == ("d-val", 3)
    unset, _ = parse("--dataset", "d", "-o", "x")
    assert not spec_from_values(unset).HasField("num_gpus")  # the trainer's GPUs decide
    assert parse("--dataset", "d", "-o", "x", "--num-gpus", "2")[0]["num_gpus"] == 2
