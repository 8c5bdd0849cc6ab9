"""The catalogue of bad input over gRPC: the registry and the trainer, as real servers on
loopback, called through the raw stubs (no client-side check gets there first).

Every row is one mistake a user can make. Each must come back with its gRPC status, its stable
error code where the product defines one (``tuneplex-error-code`` trailing metadata), the field
at fault named (``tuneplex-error-param``, or the message), and a message short enough to read
that shows neither a file-system path of the server nor a gRPC target.

Nothing here trains: every spec is refused before a job is queued (a row that is not refused
has its job cancelled at once, and fails).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pytest

from services.common.errors import CODE_KEY, PARAM_KEY
from services.common.grpc_server import channel_options
from services.common.stubs import (
    registry_pb2,
    registry_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tests.helpers.registry_artifacts import chat_line, write_adapter, write_model
from tests.helpers.sample_data import chat_examples, write_jsonl
from tests.helpers.trainer_process import start_trainer

pytestmark = pytest.mark.integration

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

ADAPTER = registry_pb2.ARTIFACT_KIND_ADAPTER
DATASET = registry_pb2.ARTIFACT_KIND_DATASET
MODEL = registry_pb2.ARTIFACT_KIND_MODEL

# What the shared registry holds for these rows (names unique to this module: it is shared).
TINY_BASE = "bad-inputs-tiny-base"
LORA = "bad-inputs-lora"
DATA = "bad-inputs-data"
BASE = "smollm2-135m-instruct"

# A server's own paths, storage keys and addresses have no place in what a user reads.
SERVER_PATH = re.compile(
    r"(?:/tmp/|/root\b|/home/|/work/|/usr/|/var/|/opt/|/proc/|\.tuneplex|site-packages"
    r"|pytest-of-|blobs/sha256/|Traceback|File \")"
)
GRPC_TARGET = re.compile(r"(?:ipv4:|ipv6:|127\.0\.0\.1:|localhost:|dns:|unix:)")
MAX_MESSAGE_CHARS = 1100  # the error table caps messages at 1000, plus "... (truncated)"


@dataclass(frozen=True)
class Case:
    what: str
    call: Callable[[Wire], object]
    status: grpc.StatusCode
    code: str | None  # the stable ``tuneplex-error-code``; None where the product has none
    field: str  # the ``tuneplex-error-param``, or words the message must contain

    def __str__(self) -> str:
        return self.what


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Wire:
    """The raw stubs of both services, and the bytes of a valid adapter to upload."""

    registry: registry_pb2_grpc.RegistryServiceStub
    trainer: trainer_pb2_grpc.TrainerServiceStub
    adapter_files: dict[str, bytes]

    def upload(
        self,
        kind: int,
        name: str,
        files: dict[str, bytes],
        *,
        base_model: str = "",
        lineage: registry_pb2.Lineage | None = None,
        entries: list[registry_pb2.FileEntry] | None = None,
        chunks: list[registry_pb2.FileChunk] | None = None,
        header: bool = True,
    ) -> registry_pb2.ArtifactVersion:
        """Upload ``files`` (path -> bytes) as the client would; ``entries`` / ``chunks``
        replace what the header declares / what is sent, to lie about them."""
        if entries is None:
            entries = [
                registry_pb2.FileEntry(path=p, size_bytes=len(b), sha256=sha256(b))
                for p, b in files.items()
            ]
        if chunks is None:
            chunks = [registry_pb2.FileChunk(path=p, data=b) for p, b in files.items() if b]
        head = registry_pb2.UploadHeader(
            kind=kind, name=name, base_model=base_model, files=entries, lineage=lineage
        )

        def requests() -> Iterator[registry_pb2.UploadArtifactRequest]:
            if header:
                yield registry_pb2.UploadArtifactRequest(header=head)
            for chunk in chunks:
                yield registry_pb2.UploadArtifactRequest(chunk=chunk)

        return self.registry.UploadArtifact(requests(), timeout=60).version

    def adapter(self, name: str, extra: dict[str, bytes] | None = None, **kw):
        return self.upload(
            ADAPTER, name, {**self.adapter_files, **(extra or {})}, base_model=TINY_BASE, **kw
        )

    def dataset(self, lines: Iterable[str], path: str = "train.jsonl", name: str = DATA):
        return self.upload(DATASET, name, {path: ("\n".join(lines) + "\n").encode()})

    def resolve(self, ref: str, kind: int = ADAPTER):
        return self.registry.ResolveArtifact(
            registry_pb2.ResolveArtifactRequest(kind=kind, ref=ref), timeout=30
        )

    def download(self, ref: str, kind: int = ADAPTER) -> list:
        request = registry_pb2.DownloadArtifactRequest(kind=kind, ref=ref)
        return list(self.registry.DownloadArtifact(request, timeout=30))

    def create_job(self, training: trainer_pb2.TrainingSpec | None = None, **spec):
        if training is not None:
            spec["training"] = training
        request = trainer_pb2.CreateJobRequest(spec=trainer_pb2.JobSpec(**spec))
        job = self.trainer.CreateJob(request, timeout=120).job
        # Refused rows must never queue work; if one was accepted, stop it before failing.
        self.trainer.CancelJob(trainer_pb2.CancelJobRequest(id=job.id), timeout=30)
        return job


# --- the rows ------------------------------------------------------------------------------


def get(name: str, kind: int = ADAPTER) -> Callable[[Wire], object]:
    return lambda w: w.registry.GetArtifact(
        registry_pb2.GetArtifactRequest(kind=kind, name=name), timeout=30
    )


def alias(alias_name: str, version: int = 1, name: str = DATA) -> Callable[[Wire], object]:
    return lambda w: w.registry.SetAlias(
        registry_pb2.SetAliasRequest(kind=DATASET, name=name, alias=alias_name, version=version),
        timeout=30,
    )


def dataset(*lines: str, path: str = "train.jsonl") -> Callable[[Wire], object]:
    return lambda w: w.dataset(lines, path=path)


def promote(alias_name: str = "prod", kind: int = ADAPTER, eval_set: str = "bad-inputs-eval"):
    return lambda w: w.registry.PromoteAlias(
        registry_pb2.PromoteAliasRequest(
            kind=kind, name=LORA, alias=alias_name, version=1, eval_set=eval_set
        ),
        timeout=30,
    )


def layout(extra: dict[str, bytes]) -> Callable[[Wire], object]:
    return lambda w: w.adapter("bad-inputs-layout", extra)


def message(role: str, content) -> dict:
    return {"role": role, "content": content}


def chat(*messages: dict) -> str:
    return json.dumps({"messages": list(messages)})


GOOD = chat_line()
EVAL_ITEM = json.dumps({"input": [message("user", "2+2?")], "answer": "4"})

REGISTRY_CASES = [
    # names
    Case("empty name", get(""), INVALID, None, "name"),
    Case("uppercase name", get("Sql-Lora"), INVALID, None, "name"),
    Case("64-character name", get("x" * 64), INVALID, None, "name"),
    Case("15k-character name", get("x" * 15_000), INVALID, None, "name"),
    Case("path-like name", get("../etc"), INVALID, None, "name"),
    Case("name with a slash", get("a/b"), INVALID, None, "name"),
    Case(
        "bad name in ListArtifactVersions",
        lambda w: w.registry.ListArtifactVersions(
            registry_pb2.ListArtifactVersionsRequest(kind=ADAPTER, name="Bad Name"), timeout=30
        ),
        INVALID,
        None,
        "name",
    ),
    Case("kind left unset", get(LORA, kind=0), INVALID, None, "kind"),
    Case("unknown kind", get(LORA, kind=99), INVALID, None, "kind"),
    # references
    Case("version in superscript digits", lambda w: w.resolve(f"{LORA}@²"), INVALID, None, "ref"),
    Case("version in Arabic-Indic digits", lambda w: w.resolve(f"{LORA}@١"), INVALID, None, "ref"),
    Case("version 0", lambda w: w.resolve(f"{LORA}@0"), INVALID, None, "ref"),
    Case(
        "version past the stored integer",
        lambda w: w.resolve(f"{LORA}@99999999999999999999999"),
        INVALID,
        None,
        "ref",
    ),
    Case("empty selector", lambda w: w.resolve(f"{LORA}@"), INVALID, None, "ref"),
    Case("two selectors", lambda w: w.resolve(f"{LORA}@1@2"), INVALID, None, "ref"),
    Case("15k-character alias in a ref", lambda w: w.resolve(f"{LORA}@{'a' * 15_000}"),
         INVALID, None, "ref"),
    Case("bad ref in a download", lambda w: w.download(f"{LORA}@²"), INVALID, None, "ref"),
    Case(
        "bad ref in GetLineage",
        lambda w: w.registry.GetLineage(
            registry_pb2.GetLineageRequest(kind=ADAPTER, ref=f"{LORA}@١"), timeout=30
        ),
        INVALID,
        None,
        "ref",
    ),
    Case(
        "malformed page token",
        lambda w: w.registry.ListArtifacts(
            registry_pb2.ListArtifactsRequest(page_token="not-a-token"), timeout=30
        ),
        INVALID,
        None,
        "page_token",
    ),
    # unknown artifacts
    Case("unknown adapter", lambda w: w.resolve("no-such-lora"), NOT_FOUND, None, "no-such-lora"),
    Case("absent version", lambda w: w.resolve(f"{LORA}@7"), NOT_FOUND, None, "version 7"),
    Case("unknown alias", lambda w: w.resolve(f"{LORA}@nightly"), NOT_FOUND, None, "nightly"),
    Case("download of an unknown adapter", lambda w: w.download("no-such-lora"), NOT_FOUND, None,
         "no-such-lora"),
    Case("unknown artifact by name", get("no-such-lora"), NOT_FOUND, None, "no-such-lora"),
    Case(
        "delete of an unknown artifact",
        lambda w: w.registry.DeleteArtifact(
            registry_pb2.DeleteArtifactRequest(kind=ADAPTER, name="no-such-lora"), timeout=30
        ),
        NOT_FOUND,
        None,
        "no-such-lora",
    ),
    # aliases
    Case("alias 'latest' is reserved", alias("latest"), INVALID, None, "alias"),
    Case("numeric alias", alias("3"), INVALID, None, "alias"),
    Case("uppercase alias", alias("Prod"), INVALID, None, "alias"),
    Case("15k-character alias on SetAlias", alias("a" * 15_000), INVALID, None, "alias"),
    Case("alias to an absent version", alias("prod", version=99), NOT_FOUND, None, "99"),
    Case("alias on an unknown artifact", alias("prod", name="no-such-data"), NOT_FOUND, None,
         "no-such-data"),
    Case(
        "delete of an unknown alias",
        lambda w: w.registry.DeleteAlias(
            registry_pb2.DeleteAliasRequest(kind=DATASET, name=DATA, alias="nope"), timeout=30
        ),
        NOT_FOUND,
        None,
        "nope",
    ),
    # uploads
    Case("upload without a header", lambda w: w.adapter(LORA, header=False), INVALID, None,
         "header"),
    Case("upload with an invalid name", lambda w: w.adapter("Bad Name!"), INVALID, None, "name"),
    Case("upload with no files", lambda w: w.upload(DATASET, DATA, {}), INVALID, None, "files"),
    Case("pickle weights", layout({"adapter_model.bin": b"\x80\x04pickle"}), INVALID,
         "pickle_refused", "files"),
    Case(
        "declared size larger than sent",
        lambda w: w.upload(
            DATASET,
            DATA,
            {"train.jsonl": GOOD.encode()},
            entries=[
                registry_pb2.FileEntry(
                    path="train.jsonl", size_bytes=999, sha256=sha256(GOOD.encode())
                )
            ],
        ),
        INVALID,
        None,
        "chunk",
    ),
    Case(
        "bytes that do not match the declared sha256",
        lambda w: w.upload(
            DATASET,
            DATA,
            {"train.jsonl": GOOD.encode()},
            entries=[
                registry_pb2.FileEntry(
                    path="train.jsonl", size_bytes=len(GOOD), sha256=sha256(b"other")
                )
            ],
        ),
        INVALID,
        None,
        "train.jsonl",
    ),
    Case(
        "a chunk for a file the header does not list",
        lambda w: w.upload(
            DATASET,
            DATA,
            {"train.jsonl": GOOD.encode()},
            chunks=[registry_pb2.FileChunk(path="other.jsonl", data=GOOD.encode())],
        ),
        INVALID,
        None,
        "chunk",
    ),
    Case("adapter of an unknown base model",
         lambda w: w.upload(ADAPTER, "bad-inputs-orphan", w.adapter_files,
                            base_model="no-such-model"),
         PRECONDITION, "base_model_not_found", "base_model"),
    Case("adapter with a malformed base model ref",
         lambda w: w.upload(ADAPTER, "bad-inputs-orphan", w.adapter_files,
                            base_model=f"{TINY_BASE}@²"),
         INVALID, None, "base_model"),
    Case("lineage with a malformed dataset ref",
         lambda w: w.adapter("bad-inputs-lineage",
                             lineage=registry_pb2.Lineage(dataset=f"{DATA}@99999999999999999999999")),
         INVALID, None, "lineage.dataset"),
    Case("lineage naming an unknown dataset",
         lambda w: w.adapter("bad-inputs-lineage",
                             lineage=registry_pb2.Lineage(dataset="no-such-data")),
         PRECONDITION, None, "lineage.dataset"),
    Case("adapter_config.json that is not JSON",
         layout({"adapter_config.json": b"{not json"}), INVALID, None, "adapter_config.json"),
    Case("adapter_config.json with rank 0",
         lambda w: w.adapter("bad-inputs-rank", {"adapter_config.json": json.dumps(
             {**json.loads(w.adapter_files["adapter_config.json"]), "r": 0}).encode()}),
         INVALID, None, "'r'"),
    # file layouts
    Case("a file that is also a folder", layout({"tok": b"a", "tok/x": b"b"}), INVALID,
         "file_path_invalid", "files"),
    Case("a 300-character path component", layout({"x" * 300: b"a"}), INVALID,
         "file_path_invalid", "files"),
    Case("a path out of the folder", layout({"../x": b"a"}), INVALID, "file_path_invalid",
         "files"),
    Case("an absolute path", layout({"/x.txt": b"a"}), INVALID, "file_path_invalid", "files"),
    Case("paths that differ only in case", layout({"README.md": b"a", "readme.md": b"b"}),
         INVALID, "file_path_invalid", "files"),
    Case("a backslash in a path", layout({"a\\b.txt": b"a"}), INVALID, "file_path_invalid",
         "files"),
    Case("a Windows drive in a path", layout({"c:x.txt": b"a"}), INVALID, "file_path_invalid",
         "files"),
    Case("a control character in a path", layout({"a\nb.txt": b"a"}), INVALID,
         "file_path_invalid", "files"),
    # datasets
    Case("not JSON on line 3", dataset(GOOD, GOOD, '{"messages": [', GOOD), INVALID, None,
         "line 3"),
    Case("a line that is not an object", dataset(GOOD, "[1, 2]"), INVALID, None, "line 2"),
    Case("no 'messages'", dataset(json.dumps({"text_": "hi"})), INVALID, None, "line 1"),
    Case("'messages' not a list", dataset(json.dumps({"messages": "hi"})), INVALID, None,
         "line 1"),
    Case("an unknown role",
         dataset(chat(message("user", "q"), message("wizard", "a"))), INVALID, None, "line 1"),
    Case("an empty assistant message",
         dataset(GOOD, chat(message("user", "q"), message("assistant", " "))), INVALID, None,
         "line 2"),
    Case("no assistant message", dataset(chat(message("user", "q"))), INVALID, None, "line 1"),
    Case("content that is not a string",
         dataset(chat(message("user", 3), message("assistant", "a"))), INVALID, None, "line 1"),
    Case("not UTF-8",
         lambda w: w.upload(DATASET, DATA, {"train.jsonl": b'{"messages": "\xff\xfe"}\n'}),
         INVALID, None, "line 1"),
    Case("an empty dataset file", dataset(""), INVALID, None, "no examples"),
    Case("a dataset file that is not .jsonl", dataset(GOOD, path="train.csv"), INVALID, None,
         "files"),
    # eval sets and databases
    Case("an eval set whose line 2 ends on the assistant",
         dataset(EVAL_ITEM, json.dumps({"input": [message("assistant", "a")]}),
                 path="heldout.jsonl"),
         INVALID, None, "heldout.jsonl line 2"),
    Case("an eval set with an item without input", dataset(EVAL_ITEM, json.dumps({"sql": "x"})),
         INVALID, None, "missing_input"),
    Case("a .db file that is not SQLite",
         lambda w: w.upload(DATASET, "bad-inputs-db", {"shop.db": b"CREATE TABLE t (x);\n" * 9}),
         INVALID, "not_sqlite", "file"),
    # promotion
    Case("promotion to an alias of another artifact", promote("other-lora@prod"), INVALID, None,
         "alias"),
    Case("promotion of a dataset", promote(kind=DATASET), INVALID, None, "kind"),
    Case("promotion gated on a chat dataset", promote(eval_set=DATA), PRECONDITION,
         "eval_set_invalid", "eval_set"),
    Case("promotion gated on an unknown eval set", promote(eval_set="no-such-set"), PRECONDITION,
         "eval_set_not_found", "eval_set"),
    Case("promotion without an evaluation", promote(), PRECONDITION, "evaluation_missing",
         "eval_set"),
]


def training(**fields) -> trainer_pb2.TrainingSpec:
    """A spec that would be accepted, with ``fields`` changed: ``hp`` and ``lora`` hold the
    fields of those sections."""
    hp = dict(max_steps=1, batch_size=1, max_seq_length=64)
    hp.update(fields.pop("hp", {}))
    lora = dict(r=4)
    lora.update(fields.pop("lora", {}))
    spec = dict(base_model=BASE, dataset="bad-inputs-train", output_name="bad-inputs-out")
    spec.update(fields)
    return trainer_pb2.TrainingSpec(
        **spec,
        hyperparameters=trainer_pb2.Hyperparameters(**hp),
        lora=trainer_pb2.LoraConfig(**lora),
    )


def job(**fields) -> Callable[[Wire], object]:
    return lambda w: w.create_job(training(**fields))


OUTPUT = "{{sample.output_text}}"
REGEX_GRADER = {"type": "regex", "name": "r", "input": OUTPUT, "pattern": "a+"}


def evaluation(graders: list[dict] | None = None, **fields) -> Callable[[Wire], object]:
    """An eval job that would be accepted but for ``graders`` / ``fields``."""
    from google.protobuf import json_format, struct_pb2

    spec = {"model": BASE, "eval_set": "bad-inputs-train", **fields}
    structs = [json_format.ParseDict(g, struct_pb2.Struct()) for g in graders or [REGEX_GRADER]]
    return lambda w: w.create_job(evaluation=trainer_pb2.EvalSpec(**spec, graders=structs))


EG = "evaluation.graders[0]."
HP = "training.hyperparameters."
LO = "training.lora."
INF, NAN = float("inf"), float("nan")

TRAINER_CASES = [
    Case("learning_rate inf", job(hp=dict(learning_rate=INF)), INVALID, "invalid_spec",
         HP + "learning_rate"),
    Case("learning_rate nan", job(hp=dict(learning_rate=NAN)), INVALID, "invalid_spec",
         HP + "learning_rate"),
    Case("negative learning_rate", job(hp=dict(learning_rate=-1e-4)), INVALID, "invalid_spec",
         HP + "learning_rate"),
    Case("epochs inf", job(hp=dict(epochs=INF)), INVALID, "invalid_spec", HP + "epochs"),
    Case("negative epochs", job(hp=dict(epochs=-1)), INVALID, "invalid_spec", HP + "epochs"),
    Case("warmup_ratio nan", job(hp=dict(warmup_ratio=NAN)), INVALID, "invalid_spec",
         HP + "warmup_ratio"),
    Case("weight_decay inf", job(hp=dict(weight_decay=INF)), INVALID, "invalid_spec",
         HP + "weight_decay"),
    Case("neftune_noise_alpha inf", job(hp=dict(neftune_noise_alpha=INF)), INVALID,
         "invalid_spec", HP + "neftune_noise_alpha"),
    Case("negative batch_size", job(hp=dict(batch_size=-1)), INVALID, "invalid_spec",
         HP + "batch_size"),
    Case("negative gradient_accumulation_steps", job(hp=dict(gradient_accumulation_steps=-5)),
         INVALID, "invalid_spec", HP + "gradient_accumulation_steps"),
    Case("max_seq_length below 16", job(hp=dict(max_seq_length=8)), INVALID, "invalid_spec",
         HP + "max_seq_length"),
    Case("negative max_steps", job(hp=dict(max_steps=-3)), INVALID, "invalid_spec",
         HP + "max_steps"),
    Case("seed past 32 bits", job(hp=dict(seed=2**40)), INVALID, "invalid_spec", HP + "seed"),
    Case("unknown lr_scheduler", job(hp=dict(lr_scheduler=77)), INVALID, "invalid_spec",
         HP + "lr_scheduler"),
    Case("unknown precision", job(hp=dict(precision=42)), INVALID, "invalid_spec",
         HP + "precision"),
    Case("eval_steps without a validation_dataset", job(hp=dict(eval_steps=5)), INVALID,
         "invalid_spec", "training.validation_dataset"),
    Case("lora.alpha inf", job(lora=dict(alpha=INF)), INVALID, "invalid_spec", LO + "alpha"),
    Case("lora.alpha nan", job(lora=dict(alpha=NAN)), INVALID, "invalid_spec", LO + "alpha"),
    Case("lora.dropout 1", job(lora=dict(dropout=1.0)), INVALID, "invalid_spec",
         LO + "dropout"),
    Case("lora.r too large", job(lora=dict(r=4096)), INVALID, "invalid_spec", LO + "r"),
    Case("negative lora.r", job(lora=dict(r=-1)), INVALID, "invalid_spec", LO + "r"),
    Case("lora.loraplus_lr_ratio between 0 and 1", job(lora=dict(loraplus_lr_ratio=0.5)),
         INVALID, "invalid_spec", LO + "loraplus_lr_ratio"),
    Case("a target module that is code", job(lora=dict(target_modules=["os.system"])), INVALID,
         "invalid_spec", LO + "target_modules"),
    Case("unknown method", job(method=99), INVALID, "invalid_spec", "training.method"),
    Case("zero_stage 1", job(zero_stage=1), INVALID, "invalid_spec", "training.zero_stage"),
    Case("output_name with spaces", job(output_name="Bad Name!"), INVALID, "invalid_spec",
         "training.output_name"),
    Case("base_model left out", job(base_model=""), INVALID, "invalid_spec",
         "training.base_model"),
    Case("dataset ref in superscript digits", job(dataset="bad-inputs-train@²"), INVALID,
         "invalid_spec", "training.dataset"),
    Case("dataset ref version 0", job(dataset="bad-inputs-train@0"), INVALID, None,
         "training.dataset"),
    Case("15k-character dataset ref", job(dataset="d" * 15_000), INVALID, "invalid_spec",
         "training.dataset"),
    Case("num_gpus 2 on a CPU trainer", job(num_gpus=2), PRECONDITION, "invalid_spec",
         "training.num_gpus"),
    Case("unknown dataset", job(dataset="no-such-data"), NOT_FOUND, "dataset_not_found",
         "training.dataset"),
    Case("unknown base model", job(base_model="no-such-model"), NOT_FOUND, "model_not_found",
         "training.base_model"),
    Case("a spec with no kind of work", lambda w: w.create_job(), INVALID,
         "invalid_spec", "spec.training"),
    Case(
        "estimate of a spec with lora.alpha inf",
        lambda w: w.trainer.EstimateJobMemory(
            trainer_pb2.EstimateJobMemoryRequest(
                spec=trainer_pb2.JobSpec(training=training(lora=dict(alpha=INF)))
            ),
            timeout=120,
        ),
        INVALID,
        "invalid_spec",
        LO + "alpha",
    ),
    Case(
        "export of an unknown adapter",
        lambda w: w.create_job(
            export=trainer_pb2.ExportSpec(adapter="no-such-lora", output_name="bad-inputs-merged")
        ),
        NOT_FOUND,
        "adapter_not_found",
        "export.adapter",
    ),
    Case(
        "export of a malformed adapter ref",
        lambda w: w.create_job(
            export=trainer_pb2.ExportSpec(adapter=f"{LORA}@١", output_name="bad-inputs-merged")
        ),
        INVALID,
        "invalid_spec",
        "export.adapter",
    ),
    Case("eval grader of an unknown type", evaluation([{"type": "gleu", "name": "g"}]),
         INVALID, "invalid_grader", EG + "type"),
    Case("eval regex grader with an invalid pattern",
         evaluation([{**REGEX_GRADER, "pattern": "(unclosed"}]), INVALID, "invalid_grader",
         EG + "pattern"),
    Case("eval json grader with an invalid JSON schema",
         evaluation([{"type": "json", "name": "j", "input": OUTPUT, "schema": {"type": "nope"}}]),
         INVALID, "invalid_grader", EG + "schema"),
    Case("eval of a model that does not exist", evaluation(model="no-such-model"), NOT_FOUND,
         "model_not_found", "evaluation.model"),
    Case("eval on a chat dataset", evaluation(), PRECONDITION, "not_an_eval_set",
         "evaluation.eval_set"),
    Case("eval sampling temperature inf",
         evaluation(sampling=trainer_pb2.SamplingParams(temperature=INF)), INVALID,
         "invalid_spec", "evaluation.sampling.temperature"),
    Case("eval concurrency 1000", evaluation(concurrency=1000), INVALID, "invalid_spec",
         "evaluation.concurrency"),
    Case("unknown job", lambda w: w.trainer.GetJob(trainer_pb2.GetJobRequest(id="job-nope")),
         NOT_FOUND, "job_not_found", "id"),
    Case("cancel of an unknown job",
         lambda w: w.trainer.CancelJob(trainer_pb2.CancelJobRequest(id="job-nope")),
         NOT_FOUND, "job_not_found", "id"),
    Case("events of an unknown job",
         lambda w: list(w.trainer.StreamJobEvents(
             trainer_pb2.StreamJobEventsRequest(id="job-nope"), timeout=30)),
         NOT_FOUND, "job_not_found", "id"),
    Case("checkpoints of an unknown job",
         lambda w: w.trainer.ListCheckpoints(trainer_pb2.ListCheckpointsRequest(id="job-nope")),
         NOT_FOUND, "job_not_found", "id"),
    Case("a path as a job id",
         lambda w: w.trainer.GetJob(trainer_pb2.GetJobRequest(id="../../registry")),
         NOT_FOUND, "job_not_found", "id"),
    Case("a 15k-character job id",
         lambda w: w.trainer.GetJob(trainer_pb2.GetJobRequest(id="j" * 15_000)),
         NOT_FOUND, "job_not_found", "id"),
    Case("malformed page token of ListJobs",
         lambda w: w.trainer.ListJobs(trainer_pb2.ListJobsRequest(page_token="x")),
         INVALID, None, "page_token"),
]


# --- the servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(registry_with_base_model, tmp_path_factory):
    """The session's registry, with what the rows name: a tiny base model, an adapter of it,
    a dataset with one version, an eval set, and a dataset the trainer rows could train on."""
    root = tmp_path_factory.mktemp("bad-inputs")
    adapter = write_adapter(root / "adapter", base_model=TINY_BASE)
    files = {p.name: p.read_bytes() for p in adapter.iterdir()}
    with wire_to(registry_with_base_model.target, adapter_files=files) as w:
        tiny = write_model(root / "tiny")
        w.upload(MODEL, TINY_BASE, {p.name: p.read_bytes() for p in tiny.iterdir()})
        w.adapter(LORA)
        w.dataset([GOOD, GOOD])
        w.dataset([EVAL_ITEM], name="bad-inputs-eval")
        data = write_jsonl(chat_examples(8), root / "train.jsonl")
        w.upload(DATASET, "bad-inputs-train", {"train.jsonl": data.read_bytes()})
    return registry_with_base_model, files


@pytest.fixture(scope="module")
def trainer(registry, tmp_path_factory):
    server = start_trainer(tmp_path_factory.mktemp("bad-inputs-trainer"), registry[0].target)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def wire_to(
    registry_target: str, trainer_target: str = "", adapter_files: dict[str, bytes] | None = None
) -> Iterator[Wire]:
    channels = [
        grpc.insecure_channel(t, options=channel_options())
        for t in (registry_target, trainer_target or registry_target)
    ]
    try:
        yield Wire(
            registry_pb2_grpc.RegistryServiceStub(channels[0]),
            trainer_pb2_grpc.TrainerServiceStub(channels[1]),
            adapter_files or {},
        )
    finally:
        for channel in channels:
            channel.close()


# --- the assertions ------------------------------------------------------------------------


def assert_refused(case: Case, call: Callable[[], object], *leaks: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = caught.value
    text = err.details() or ""
    trailing = dict(err.trailing_metadata() or ())
    assert err.code() == case.status, f"{case}: {err.code()} {text!r}"
    if case.code is not None:
        assert trailing.get(CODE_KEY) == case.code, f"{case}: code {trailing} {text!r}"
    param = trailing.get(PARAM_KEY)
    assert param == case.field or case.field in text, (
        f"{case}: neither param {param!r} nor the message {text!r} names {case.field!r}"
    )
    assert 0 < len(text) <= MAX_MESSAGE_CHARS, f"{case}: {len(text)} characters"
    for what in (text, param or ""):
        assert not SERVER_PATH.search(what), f"{case}: a server path in {what!r}"
        assert not GRPC_TARGET.search(what), f"{case}: a gRPC target in {what!r}"
        for leak in leaks:
            assert leak not in what, f"{case}: {leak!r} in {what!r}"


@pytest.mark.parametrize("case", REGISTRY_CASES, ids=str)
def test_registry_refuses_bad_input(case, registry):
    server, files = registry
    with wire_to(server.target, adapter_files=files) as w:
        assert_refused(case, lambda: case.call(w), str(server.home), server.target)


@pytest.mark.parametrize("case", TRAINER_CASES, ids=str)
def test_trainer_refuses_bad_input(case, registry, trainer):
    server, files = registry
    leaks = (str(server.home), str(trainer.home), server.target, trainer.target)
    with wire_to(server.target, trainer.target, files) as w:
        assert_refused(case, lambda: case.call(w), *leaks)

