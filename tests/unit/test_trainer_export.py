"""Export jobs without a model: the spec, the load-precision decision (QLoRA included), the
refusals of adapters a merge would get wrong, the Ollama Modelfile, the memory estimate and the
CLI's own input checks."""

from __future__ import annotations

import json

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.stubs import trainer_pb2
from services.trainer.export_spec import (
    ExportConfig,
    export_config_from_proto,
    export_config_to_proto,
    job_config_from_json,
    merge_load_plan,
)
from services.trainer.memory import (
    CPU_OVERHEAD,
    GIB,
    ModelShape,
    estimate_export_memory,
    require_export_fit,
)
from services.trainer.recipes.export import check_mergeable, training_of
from services.trainer.recipes.ollama import CHATML_GO_TEMPLATE, chatml_default_system, modelfile
from services.trainer.spec import TrainingConfig
from services.trainer.worker.protocol import WorkerConfig
from tests.helpers.admission_registry import SMOLLM2_CONFIG

# SmolLM2-135M-Instruct's chat template, verbatim.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PLAIN_CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)


def test_spec_defaults_and_round_trip():
    c = export_config_from_proto(trainer_pb2.ExportSpec(adapter="sql-lora@3", output_name="m"))
    assert (c.precision, c.ollama_modelfile, c.num_gpus, c.output_kind) == (
        "bf16",
        False,
        0,
        "model",
    )
    fp32 = export_config_from_proto(
        trainer_pb2.ExportSpec(
            adapter="sql-lora", output_name="m", precision=trainer_pb2.PRECISION_FP32
        )
    )
    assert fp32.precision == "fp32"
    back = export_config_to_proto(fp32)
    assert (back.adapter, back.precision) == ("sql-lora", trainer_pb2.PRECISION_FP32)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"adapter": "", "output_name": "m"}, "export.adapter"),
        ({"adapter": "Bad/Ref", "output_name": "m"}, "export.adapter"),
        ({"adapter": "a", "output_name": ""}, "export.output_name"),
        ({"adapter": "a", "output_name": "Not A Name"}, "export.output_name"),
        ({"adapter": "a", "output_name": "a..b"}, "export.output_name"),
        ({"adapter": "a", "output_name": "m", "precision": 99}, "export.precision"),
    ],
)
def test_bad_specs_name_the_field(fields, param):
    with pytest.raises(InvalidArgument) as caught:
        export_config_from_proto(trainer_pb2.ExportSpec(**fields))
    assert caught.value.param == param


def test_stored_configs_come_back_as_their_kind():
    export = ExportConfig(adapter="a@1", output_name="m", base_model="b@1")
    training = TrainingConfig(base_model="b@1", dataset="d@1", output_name="o")
    assert job_config_from_json(export.model_dump_json()) == export
    assert job_config_from_json(training.model_dump_json()) == training


def test_worker_config_holds_exactly_one_kind(tmp_path):
    export = ExportConfig(adapter="a@1", output_name="m")
    common = dict(job_id="j", registry_target="x:1", cache_dir=tmp_path)
    assert WorkerConfig(export=export, **common).training is None
    with pytest.raises(ValueError, match="exactly one"):
        WorkerConfig(**common)


@pytest.mark.parametrize(
    ("training", "dtype", "says"),
    [
        (None, "fp32", "no training report"),
        ({"method": "lora", "precision": "bf16"}, "bf16", "same precision"),
        ({"method": "dora", "precision": "fp32"}, "fp32", "same precision"),
        ({"method": "lora", "precision": "fp16"}, "fp16", "same precision"),
        # QLoRA: the unquantized base in the 4-bit compute dtype, never the 4-bit weights.
        ({"method": "qlora", "precision": "bf16"}, "bf16", "unquantized base"),
        ({"method": "qlora", "precision": "fp16"}, "bf16", "never into 4-bit"),
        ({"method": "qlora", "precision": "fp32"}, "fp32", "unquantized base"),
    ],
)
def test_load_precision_follows_training(training, dtype, says):
    plan = merge_load_plan(training)
    assert plan.dtype == dtype
    assert says in plan.reason


@pytest.mark.parametrize(
    ("training", "code"),
    [
        ({"method": "full", "precision": "bf16"}, "nothing_to_merge"),
        ({"method": "lora", "precision": "int8"}, "unsupported_adapter"),
    ],
)
def test_load_plan_refuses_what_cannot_be_merged(training, code):
    with pytest.raises(FailedPrecondition) as caught:
        merge_load_plan(training)
    assert caught.value.code == code


def test_training_precision_is_read_from_the_adapters_report(tmp_path):
    assert training_of(tmp_path) is None
    report = {"method": "qlora", "hyperparameters": {"precision": "bf16", "method": "qlora"}}
    (tmp_path / "training_report.json").write_text(json.dumps(report))
    assert merge_load_plan(training_of(tmp_path)).reason.startswith("qlora")


LORA = {"peft_type": "LORA", "target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize(
    ("adapter", "base", "says"),
    [
        ({"peft_type": "PROMPT_TUNING"}, {}, "PROMPT_TUNING adapter"),
        ({**LORA, "layer_replication": [[0, 4]]}, {}, "layer_replication"),
        ({**LORA, "modules_to_save": ["lm_head"]}, {"tie_word_embeddings": True}, "ties"),
        ({**LORA, "target_modules": ["q_proj", "embed_tokens"]}, {"tie_word_embeddings": True},
         "embed_tokens"),
    ],
)
def test_exotic_adapters_are_refused_with_the_reason(adapter, base, says):
    with pytest.raises(FailedPrecondition) as caught:
        check_mergeable(adapter, base)
    assert says in caught.value.message
    assert caught.value.param == "export.adapter"


def test_mergeable_adapters_pass():
    check_mergeable(LORA, {"tie_word_embeddings": True})
    check_mergeable({**LORA, "use_dora": True}, {})
    check_mergeable({**LORA, "modules_to_save": ["lm_head"]}, {"tie_word_embeddings": False})
    check_mergeable({"target_modules": "all-linear"}, {"tie_word_embeddings": True})


def test_modelfile_for_a_chatml_template_with_a_built_in_system_prompt():
    assert chatml_default_system(SMOLLM2_TEMPLATE) == (
        True,
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    )
    text = modelfile(SMOLLM2_TEMPLATE, {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"})
    assert "FROM .\n" in text
    assert f'TEMPLATE """{CHATML_GO_TEMPLATE}"""' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in text
    stops = [line for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ['PARAMETER stop "<|im_start|>"', 'PARAMETER stop "<|im_end|>"']


def test_modelfile_for_plain_chatml_has_no_system():
    assert chatml_default_system(PLAIN_CHATML) == (True, None)
    assert "SYSTEM" not in modelfile(PLAIN_CHATML, {"eos_token": "<|im_end|>"})


@pytest.mark.parametrize("template", [LLAMA3, None, "{{ broken"])
def test_modelfile_fallback_for_other_templates(template):
    text = modelfile(template, {"eos_token": "<|eot_id|>", "bos_token": "<|begin_of_text|>"})
    assert "TEMPLATE" not in text.replace("no TEMPLATE", "").replace("Write TEMPLATE", "")
    assert "not ChatML" in text
    assert text.rstrip().splitlines()[-1] == 'PARAMETER stop "<|eot_id|>"'


SMOLLM2 = ModelShape.from_config(SMOLLM2_CONFIG)


def test_merge_memory_is_about_twice_the_weights():
    params = SMOLLM2.total_params()
    est = estimate_export_memory(SMOLLM2, "fp32", "bf16", 24 * GIB)
    assert dict(est.terms) == {
        "base_weights": params * 4,
        "merge_cast_and_save_buffers": params * 4,
        "framework_overhead": CPU_OVERHEAD,
    }
    assert est.device == "cpu" and est.fits
    bf16 = estimate_export_memory(SMOLLM2, "bf16", "fp32", 24 * GIB)
    assert dict(bf16.terms)["merge_cast_and_save_buffers"] == params * 4  # the fp32 copy


def test_merge_that_cannot_fit_is_refused():
    est = estimate_export_memory(SMOLLM2, "fp32", "fp32", GIB)
    with pytest.raises(FailedPrecondition) as caught:
        require_export_fit(est)
    assert caught.value.code == "out_of_memory"
    assert "host memory" in caught.value.message


def test_cli_refuses_an_unknown_dtype_before_calling_the_trainer():
    from typer.testing import CliRunner

    from services.client.cli.app import app

    result = CliRunner().invoke(app, ["export", "sql-lora", "--name", "m", "--dtype", "int4"])
    assert result.exit_code == 2
    assert "--dtype" in result.output
    helped = CliRunner().invoke(app, ["export", "--help"])
    assert helped.exit_code == 0 and "--ollama" in helped.output


def test_modelfile_is_written_from_the_tokenizers_own_fields(tmp_path):
    from types import SimpleNamespace

    from services.trainer.recipes.export import write_modelfile

    special = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "extra": ["<x>"]}
    tokenizer = SimpleNamespace(special_tokens_map=special, chat_template=SMOLLM2_TEMPLATE)
    write_modelfile(tokenizer, tmp_path)
    assert (tmp_path / "Modelfile").read_text() == modelfile(SMOLLM2_TEMPLATE, special)
