"""The eval job's spec: defaults a user relies on when leaving fields out, every bound refused
with the field named, graders validated at the trainer's edge with the spec's own param path,
and the JSON a worker receives telling an eval config from the other kinds."""

from __future__ import annotations

import math

import pytest

from services.client.trainer import eval_spec
from services.common.errors import InvalidArgument
from services.common.stubs import trainer_pb2
from services.trainer.eval_spec import (
    EvalConfig,
    eval_config_from_proto,
    eval_config_to_proto,
    graders_from_proto,
)
from services.trainer.export_spec import ExportConfig, job_config_from_json
from services.trainer.worker.protocol import WorkerConfig

REGEX = {"type": "regex", "name": "digits", "input": "{{sample.output_text}}", "pattern": r"\d+"}


def spec(**overrides) -> trainer_pb2.EvalSpec:
    sampling = overrides.pop("sampling", {})
    fields = {"model": "sql-lora@3", "eval_set": "heldout", "graders": [REGEX], **overrides}
    built = eval_spec(fields.pop("model"), fields.pop("eval_set"), fields.pop("graders"), **fields)
    built.sampling.MergeFrom(trainer_pb2.SamplingParams(**sampling))
    return built


def refused(s: trainer_pb2.EvalSpec) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        eval_config_from_proto(s)
    return caught.value


def test_defaults_are_greedy_256_tokens_16_at_once_auto_backend():
    config = eval_config_from_proto(spec())
    assert config.sampling.temperature == 0.0
    assert config.sampling.max_tokens == 256
    assert config.sampling.top_p == 1.0
    assert config.sampling.seed == 42
    assert config.concurrency == 16
    assert config.backend == "auto"
    assert config.output_name == ""  # admission names it after the eval set
    assert config.output_kind == "evaluation" and config.num_gpus == 0 and config.zero_stage == 0


def test_settings_given_are_kept_and_round_trip_through_the_proto():
    config = eval_config_from_proto(
        spec(
            sampling={"temperature": 0.7, "max_tokens": 12, "top_p": 0.9, "seed": 7},
            concurrency=4,
            backend="local",
            output_name="heldout-run",
        )
    )
    assert (config.sampling.temperature, config.sampling.max_tokens) == (0.7, 12)
    assert (config.sampling.top_p, config.sampling.seed) == (0.9, 7)
    assert (config.concurrency, config.backend, config.output_name) == (4, "local", "heldout-run")
    again = eval_config_from_proto(eval_config_to_proto(config))
    assert again == config


def test_an_explicit_zero_temperature_and_seed_zero_are_not_defaults_overridden():
    config = eval_config_from_proto(spec(sampling={"temperature": 0.0, "seed": 0}))
    assert config.sampling.temperature == 0.0
    assert config.sampling.seed == 0


S = "evaluation.sampling."


@pytest.mark.parametrize(
    ("sampling", "param"),
    [
        ({"temperature": -0.1}, S + "temperature"),
        ({"temperature": 2.5}, S + "temperature"),
        ({"temperature": math.nan}, S + "temperature"),
        ({"temperature": math.inf}, S + "temperature"),
        ({"max_tokens": -1}, S + "max_tokens"),
        ({"max_tokens": 40_000}, S + "max_tokens"),
        ({"top_p": 0.0}, S + "top_p"),
        ({"top_p": 1.5}, S + "top_p"),
        ({"top_p": math.nan}, S + "top_p"),
        ({"seed": -1}, S + "seed"),
        ({"seed": 2**40}, S + "seed"),
    ],
)
def test_sampling_out_of_bounds_is_refused_naming_the_field(sampling, param):
    exc = refused(spec(sampling=sampling))
    assert exc.param == param
    assert exc.code == "invalid_spec"
    assert param.rsplit(".", 1)[-1] in exc.message


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"concurrency": -1}, "evaluation.concurrency"),
        ({"concurrency": 257}, "evaluation.concurrency"),
        ({"model": ""}, "evaluation.model"),
        ({"model": "sql lora"}, "evaluation.model"),
        ({"eval_set": ""}, "evaluation.eval_set"),
        ({"eval_set": "set@0"}, "evaluation.eval_set"),
        ({"output_name": "Bad Name!"}, "evaluation.output_name"),
    ],
)
def test_bad_fields_are_refused_naming_them(overrides, param):
    exc = refused(spec(**overrides))
    assert exc.param == param
    assert exc.code == "invalid_spec"


def test_an_unknown_backend_number_is_refused():
    s = spec()
    s.backend = 9  # type: ignore[assignment]
    assert refused(s).param == "evaluation.backend"


def test_bad_graders_are_refused_with_the_spec_path_of_the_field():
    exc = refused(spec(graders=[{**REGEX, "pattern": "("}]))
    assert exc.param == "evaluation.graders[0].pattern"
    assert exc.code == "invalid_grader"
    unknown = refused(spec(graders=[REGEX, {"type": "gleu_check", "name": "g"}]))
    assert unknown.param is not None and unknown.param.startswith("evaluation.graders[1]")
    assert refused(spec(graders=[])).param is not None


def test_numbers_through_the_struct_normalise_like_the_same_spec_from_a_file():
    """A Struct holds 2 as 2.0: the normalised specs (and so their digest) must not differ
    between a grader sent over gRPC and the same grader read from a JSON file."""
    judge = {
        "type": "score_model",
        "name": "judge",
        "model": "judge-model",
        "input": [{"role": "user", "content": "Rate {{sample.output_text}} from 1 to 10"}],
        "range": [1, 10],
    }
    from services.evaluation.graders import validate_graders

    via_proto = graders_from_proto(spec(graders=[judge]).graders)
    assert via_proto == validate_graders([judge], param="evaluation.graders")


def test_the_worker_config_carries_an_eval_config_and_the_stored_json_reads_back():
    config = eval_config_from_proto(spec()).model_copy(
        update={"model": "sql-lora@3", "eval_set": "heldout@1", "output_name": "heldout"}
    )
    assert isinstance(job_config_from_json(config.model_dump_json()), EvalConfig)
    export = ExportConfig(adapter="a@1", output_name="m")
    assert isinstance(job_config_from_json(export.model_dump_json()), ExportConfig)
    worker = WorkerConfig(
        job_id="job-1", evaluation=config, registry_target="127.0.0.1:1", cache_dir="/tmp/c"
    )
    assert WorkerConfig.model_validate_json(worker.model_dump_json()).evaluation == config
    with pytest.raises(ValueError, match="exactly one"):
        WorkerConfig(
            job_id="job-1",
            evaluation=config,
            export=export,
            registry_target="127.0.0.1:1",
            cache_dir="/tmp/c",
        )


def test_the_client_refuses_an_unknown_setting_before_any_call():
    with pytest.raises(InvalidArgument, match="max_token"):
        eval_spec("m", "s", [REGEX], max_token=8)
