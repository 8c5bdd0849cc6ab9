"""The end-of-run evaluation of a training job (``TrainingSpec.evaluation``): one nested setting
of the declaration, with its defaults, its refusals (each naming the field at fault), its trip
through the proto and its `tuneplex jobs create` flags."""

from __future__ import annotations

import json
import re

import pytest
import typer
from typer.testing import CliRunner

from services.client.cli.spec_options import with_spec_options
from services.common.errors import InvalidArgument
from services.common.stubs import trainer_pb2
from services.common.training_spec_proto import (
    config_from_values,
    config_to_proto,
    spec_from_values,
    values_from_proto,
)
from services.trainer.device import DeviceInfo
from services.trainer.spec import training_config_from_proto

REQUIRED = dict(base_model="smollm2-135m-instruct", dataset="shop-sql@1", output_name="sql-lora")
GRADER = {
    "type": "string_check",
    "name": "answer",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
EVAL = {"eval_set": "shop-sql-heldout@1", "graders": [GRADER]}
CPU = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * 2**30, name="cpu")


def refusal(**evaluation) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        config_from_values({**REQUIRED, "evaluation": evaluation})
    return caught.value


def test_no_evaluation_unless_asked_and_the_defaults_when_asked():
    assert config_from_values(REQUIRED).evaluation is None
    assert not config_to_proto(config_from_values(REQUIRED)).HasField("evaluation")
    # An evaluation message with nothing in it is none (its empty eval_set says so).
    empty = spec_from_values({**REQUIRED, "evaluation": {}})
    assert empty.HasField("evaluation")
    assert config_from_values(values_from_proto(empty)).evaluation is None
    evaluation = config_from_values({**REQUIRED, "evaluation": EVAL}).evaluation
    assert evaluation is not None
    assert (evaluation.max_tokens, evaluation.temperature, evaluation.top_p) == (256, 0.0, 1.0)
    assert (evaluation.each_checkpoint, evaluation.promote_alias) == (False, "")
    assert evaluation.promote_margin == 0.0 and evaluation.seed == 42


@pytest.mark.parametrize(
    ("evaluation", "param", "words"),
    [
        ({"graders": [GRADER]}, "training.evaluation.eval_set", "needs an eval_set"),
        ({"each_checkpoint": True}, "training.evaluation.eval_set", "needs an eval_set"),
        ({"promote_alias": "prod"}, "training.evaluation.eval_set", "needs an eval_set"),
        ({"eval_set": "held"}, "training.evaluation.graders", "at least one grader"),
        ({**EVAL, "eval_set": "Held@x/y"}, "training.evaluation.eval_set", "invalid reference"),
        ({**EVAL, "graders": ["regex"]}, "training.evaluation.graders", "dictionary"),
        ({**EVAL, "promote_alias": "7"}, "training.evaluation.promote_alias", "a number"),
        ({**EVAL, "promote_alias": "latest"}, "training.evaluation.promote_alias", "reserved"),
        ({**EVAL, "promote_alias": "Prod!"}, "training.evaluation.promote_alias", "invalid"),
        ({**EVAL, "promote_margin": 0.1}, "training.evaluation.promote_margin", "promote_alias"),
        (
            {**EVAL, "promote_alias": "prod", "promote_margin": 2.0},
            "training.evaluation.promote_margin",
            "use a value in [0, 1]",
        ),
        ({**EVAL, "max_tokens": 0}, "training.evaluation.sampling.max_tokens", "1..32768"),
        ({**EVAL, "temperature": 3.0}, "training.evaluation.sampling.temperature", "[0, 2]"),
        ({**EVAL, "top_p": 0.0}, "training.evaluation.sampling.top_p", "(0, 1]"),
    ],
)
def test_a_bad_evaluation_is_refused_naming_its_field(evaluation, param, words):
    exc = refusal(**evaluation)
    assert exc.param == param and exc.code == "invalid_spec"
    assert words in exc.message


def test_each_checkpoint_needs_an_adapter_method():
    with pytest.raises(InvalidArgument, match="each_checkpoint") as caught:
        config_from_values(
            {**REQUIRED, "method": "full", "evaluation": {**EVAL, "each_checkpoint": True}}
        )
    assert caught.value.param == "training.evaluation.each_checkpoint"
    # A full fine-tune is still evaluated (and promoted) once, at the end.
    assert config_from_values({**REQUIRED, "method": "full", "evaluation": EVAL}).evaluation


def test_an_evaluation_round_trips_through_the_proto():
    given = {
        **EVAL,
        "max_tokens": 8,
        "temperature": 0.0,
        "each_checkpoint": True,
        "promote_alias": "prod",
        "promote_margin": 0.02,
    }
    config = config_from_values({**REQUIRED, "evaluation": given})
    spec = config_to_proto(config)
    assert spec.evaluation.eval_set == "shop-sql-heldout@1"
    assert spec.evaluation.sampling.max_tokens == 8
    assert spec.evaluation.sampling.HasField("temperature")  # greedy, said on the wire
    assert dict(spec.evaluation.graders[0]) == GRADER
    assert config_from_values(values_from_proto(spec)) == config


def test_the_trainer_normalises_the_graders_as_an_eval_job_does():
    spec = spec_from_values({**REQUIRED, "evaluation": EVAL})
    config = training_config_from_proto(spec, CPU)
    assert config.evaluation is not None
    (grader,) = config.evaluation.graders
    assert grader["name"] == "answer" and grader["type"] == "string_check"


def test_a_bad_grader_is_refused_by_the_trainer_with_its_path():
    bad = {**GRADER, "operation": "almost"}
    spec = spec_from_values({**REQUIRED, "evaluation": {**EVAL, "graders": [bad]}})
    with pytest.raises(InvalidArgument) as caught:
        training_config_from_proto(spec, CPU)
    assert (caught.value.param or "").startswith("training.evaluation.graders[0]")


seen: list[dict] = []
probe = typer.Typer()


@probe.command()
@with_spec_options
def create(settings: dict) -> None:
    seen.append(settings)


def test_the_evaluation_flags_of_jobs_create(tmp_path):
    grader_file = tmp_path / "grader.json"
    grader_file.write_text(json.dumps(GRADER))
    both = tmp_path / "two.json"
    both.write_text(json.dumps([{**GRADER, "name": "a"}, {**GRADER, "name": "b"}]))
    argv = [
        "--dataset", "shop-sql", "-o", "sql-lora", "--eval-data", "shop-sql-heldout",
        "--eval-grader", str(grader_file), "--eval-grader", str(both), "--eval-each-checkpoint",
        "--promote-alias", "prod", "--promote-margin", "0.02", "--eval-max-tokens", "8",
    ]  # fmt: skip
    result = CliRunner().invoke(probe, argv)
    assert result.exit_code == 0, result.output
    evaluation = seen[-1]["evaluation"]
    assert evaluation == {
        "eval_set": "shop-sql-heldout",
        "graders": [GRADER, {**GRADER, "name": "a"}, {**GRADER, "name": "b"}],
        "each_checkpoint": True,
        "promote_alias": "prod",
        "promote_margin": 0.02,
        "max_tokens": 8,
    }
    spec = spec_from_values(seen[-1])
    assert spec.evaluation.each_checkpoint and len(spec.evaluation.graders) == 3
    assert spec.evaluation == trainer_pb2.TrainingEval(
        eval_set="shop-sql-heldout",
        graders=spec.evaluation.graders,
        sampling=trainer_pb2.SamplingParams(max_tokens=8),
        each_checkpoint=True,
        promote_alias="prod",
        promote_margin=0.02,
    )
    # Without evaluation flags there is no evaluation at all.
    CliRunner().invoke(probe, ["--dataset", "shop-sql", "-o", "sql-lora"])
    assert "evaluation" not in seen[-1]


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "cannot read"), ("{not json", "is not JSON"), ("[1, 2]", "JSON object")],
)
def test_a_grader_file_that_is_not_a_grader_is_a_usage_error(tmp_path, content, words):
    path = tmp_path / "grader.json"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(
        probe, ["--dataset", "d", "-o", "x", "--eval-data", "e", "--eval-grader", str(path)]
    )
    assert result.exit_code == 2
    shown = re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)  # rich's box and wrapping
    assert words in shown and "--eval-grader" in shown
