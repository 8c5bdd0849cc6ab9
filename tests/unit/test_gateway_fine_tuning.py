"""The gateway's OpenAI fine-tuning layer without processes: names, the "auto" rule, the status
map, events paging and reading, request validation, owners."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import (
    InvalidArgument,
    NotFound,
    TuneplexError,
    Unauthenticated,
    Unavailable,
)
from services.common.stubs import registry_pb2, trainer_pb2
from services.gateway.fine_tuning import events, hyperparameters, names
from services.gateway.fine_tuning.jobs import (
    check_format,
    check_metadata,
    check_tuneplex,
    job_object,
    metadata_filter,
    method_of,
)
from services.gateway.fine_tuning.owners import owner_of
from services.gateway.fine_tuning.protocol import JobCreateRequest
from services.gateway.fine_tuning.status import status_of
from services.gateway.settings import GatewaySettings

# -- names -----------------------------------------------------------------------------------


def test_file_ids_are_registry_dataset_names_and_round_trip():
    file_id = names.new_file_id()
    assert names.is_file_id(file_id) and len(file_id) == len("file-") + 24
    assert names.file_dataset_ref(file_id) == f"{file_id}@1"
    for bad in ("file-xyz", "file-" + "A" * 24, file_id + "0", "../" + file_id):
        assert not names.is_file_id(bad)


def test_job_ids_map_to_the_trainers_and_back():
    assert names.job_id("job-1a2b3c") == "ftjob-1a2b3c"
    assert names.trainer_job_id("ftjob-1a2b3c") == "job-1a2b3c"
    assert names.trainer_job_id(names.job_id("job-0f0f")) == "job-0f0f"
    for unknown in ("job-1a2b", "ftjob-", "ftjob-a/b", "ftjob-" + "a" * 41, "FTJOB-1"):
        assert names.trainer_job_id(unknown) is None


def test_fine_tuned_names_parse_to_the_adapter_they_name():
    final = names.fine_tuned_model("smollm2-135m-instruct", "team-a", "sql", "abc123")
    assert final == "ft:smollm2-135m-instruct:team-a:sql:abc123"
    parsed = names.parse_fine_tuned(final)
    assert parsed is not None and parsed.adapter == "ft-abc123"
    assert (parsed.base, parsed.owner, parsed.suffix, parsed.step) == (
        "smollm2-135m-instruct",
        "team-a",
        "sql",
        None,
    )
    checkpoint = names.parse_fine_tuned(names.checkpoint_model(final, 40))
    assert checkpoint is not None and checkpoint.adapter == "ft-abc123-step-40"
    no_suffix = names.parse_fine_tuned(names.fine_tuned_model("m", "local", "", "abc"))
    assert no_suffix is not None and no_suffix.suffix == "" and no_suffix.adapter == "ft-abc"


@pytest.mark.parametrize(
    "model",
    [
        "ft:m:o:s",
        "ft:m:o:s:abc:ckpt-step-0",
        "ft:m:o:s:abc:step-3",
        "ft::o:s:abc",
        "ft:m:o:s:a/b",
        "ft:m:o:s:abc:ckpt-step-1:x",
        "sql-lora",
    ],
)
def test_malformed_fine_tuned_names_are_none(model):
    assert names.parse_fine_tuned(model) is None


def test_event_and_checkpoint_ids_carry_the_job_and_the_position():
    assert names.event_id("job-abc", 7) == "ftevent-abc-7"
    assert names.event_sequence(names.event_id("job-abc", 7)) == 7
    assert names.event_sequence("ftevent-abc") is None
    assert names.checkpoint_id("job-abc", 30) == "ftckpt-abc-30"


# -- the "auto" rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "batch", "epochs"),
    [
        (1, 1, 10),
        (10, 1, 10),
        (16, 2, 10),
        (24, 2, 10),
        (40, 4, 10),
        (64, 8, 7),
        (100, 8, 4),
        (400, 8, 1),
        (10_000, 8, 1),
    ],
)
def test_auto_hyperparameters_follow_the_documented_rule(n, batch, epochs):
    resolved = hyperparameters.resolve({}, n, dpo=False)
    assert (resolved.batch_size, resolved.n_epochs) == (batch, epochs)
    assert resolved.learning_rate_multiplier == 1.0 and resolved.beta is None
    # About 400 examples seen, unless the 10-epoch cap or one epoch of a big file binds.
    assert resolved.n_epochs * n >= min(400, n * 10)


def test_numbers_given_win_over_auto_and_dpo_gets_a_beta():
    given = {"batch_size": 3, "n_epochs": "auto", "learning_rate_multiplier": 0.5, "beta": 0.3}
    resolved = hyperparameters.resolve(given, 100, dpo=True)
    assert resolved.openai() == {
        "batch_size": 3,
        "n_epochs": 4,
        "learning_rate_multiplier": 0.5,
        "beta": 0.3,
    }
    assert hyperparameters.resolve({}, 100, dpo=True).beta == 0.1


def test_auto_dpo_batches_stay_small_enough_for_the_trainers_memory_check():
    # A pair is two sequences plus a reference pass: 8 pairs x 512 tokens do not fit 24 GiB.
    assert hyperparameters.resolve({}, 1000, dpo=True).batch_size == 4
    assert hyperparameters.resolve({}, 1000, dpo=False).batch_size == 8
    assert hyperparameters.resolve({}, 16, dpo=True).batch_size == 2


# -- status map ------------------------------------------------------------------------------

OPENAI_STATUSES = {
    "validating_files",
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "paused",
}


def test_every_trainer_state_has_an_openai_status():
    for state in trainer_pb2.JobState.values():
        assert status_of(state) in OPENAI_STATUSES
    assert status_of(trainer_pb2.JOB_STATE_VALIDATING) == "validating_files"
    assert status_of(trainer_pb2.JOB_STATE_PAUSED) == "paused"
    named = {status_of(s) for s in trainer_pb2.JobState.values() if s}
    assert named == OPENAI_STATUSES  # one status each, none left out


# -- events ----------------------------------------------------------------------------------


def _progress(seq: int, step: int) -> trainer_pb2.JobEvent:
    event = trainer_pb2.JobEvent(
        sequence=seq,
        progress=trainer_pb2.Progress(
            step=step, total_steps=10, loss=1.5, trained_tokens=100 * step
        ),
    )
    event.time.FromSeconds(1000 + seq)
    return event


def test_events_are_newest_first_and_page_by_after():
    recorded = [_progress(i, i) for i in range(1, 26)]
    first = events.page("job-x", recorded, after=None, limit=20)
    assert [e.id for e in first.data][:2] == ["ftevent-x-25", "ftevent-x-24"]
    assert len(first.data) == 20 and first.has_more
    rest = events.page("job-x", recorded, after=first.data[-1].id, limit=20)
    assert [e.id for e in rest.data] == [f"ftevent-x-{i}" for i in range(5, 0, -1)]
    assert not rest.has_more
    metrics = first.data[0]
    assert metrics.type == "metrics" and metrics.data == {
        "step": 25,
        "total_steps": 10,
        "train_loss": 1.5,
        "learning_rate": 0.0,
        "trained_tokens": 2500,
    }
    with pytest.raises(InvalidArgument) as bad:
        events.page("job-x", recorded, after="nonsense", limit=20)
    assert bad.value.param == "after"


def test_a_failed_state_is_an_error_event():
    event = trainer_pb2.JobEvent(
        sequence=3,
        state_changed=trainer_pb2.StateChanged(
            state=trainer_pb2.JOB_STATE_FAILED, message="out of memory"
        ),
    )
    shown = events.event_object("job-x", event)
    assert shown.level == "error" and shown.message == "Job failed: out of memory"


def test_recorded_reads_a_live_stream_until_it_goes_quiet_then_closes_it():
    closed = threading.Event()

    def live_stream():
        yield from (_progress(i, i) for i in (1, 2, 3))
        closed.wait(10)  # a job still running: the stream would wait for more
        raise NotFound("stream closed")

    start = time.monotonic()
    got = events.recorded(live_stream, closed.set, quiet_s=0.1)
    assert [e.sequence for e in got] == [1, 2, 3]
    assert closed.is_set() and time.monotonic() - start < 5


def test_recorded_passes_an_error_before_any_event():
    def missing():
        raise NotFound("no such job")
        yield

    with pytest.raises(NotFound):
        events.recorded(missing, lambda: None, quiet_s=0.1)


# -- request validation ----------------------------------------------------------------------


def _request(**fields) -> JobCreateRequest:
    return JobCreateRequest.model_validate({"model": "m", "training_file": "f", **fields})


@pytest.mark.parametrize(
    "hp",
    [
        {"n_epochs": 0},
        {"n_epochs": "3"},
        {"n_epochs": 2.5},
        {"batch_size": True},
        {"learning_rate_multiplier": 0},
        {"n_epochs": 51},
        {"epochs": 2},
    ],
)
def test_bad_hyperparameters_are_refused_naming_them(hp):
    with pytest.raises(ValidationError) as refused:
        _request(method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    [error] = refused.value.errors()
    assert error["loc"][:3] == ("method", "supervised", "hyperparameters")
    assert error["loc"][3] == next(iter(hp))


@pytest.mark.parametrize("suffix", ["Upper", "has space", "x" * 65, "semi:colon"])
def test_suffixes_follow_openais_rule(suffix):
    with pytest.raises(ValidationError):
        _request(suffix=suffix)
    assert _request(suffix="sql-v2_1").suffix == "sql-v2_1"


def test_metadata_limits_are_openais():
    assert check_metadata({"k" * 64: "v" * 512}) == {"k" * 64: "v" * 512}
    for bad in ({f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        with pytest.raises(InvalidArgument) as refused:
            check_metadata(bad)
        assert (refused.value.param or "").startswith("metadata")


def test_metadata_filter_reads_openais_query_syntax():
    assert metadata_filter({"metadata[team]": "a", "limit": "3"}) == {"team": "a"}
    assert metadata_filter({"metadata": "null"}) == {}
    assert metadata_filter({"after": "x"}) is None


def test_tuneplex_settings_are_training_settings_not_the_openai_ones():
    assert check_tuneplex({"max_steps": 5, "lora_r": 8}) == {"max_steps": 5, "lora_r": 8}
    for name, param in (
        ("no_such", "tuneplex.no_such"),
        ("epochs", "tuneplex.epochs"),
        ("output_name", "tuneplex.output_name"),
    ):
        with pytest.raises(InvalidArgument) as refused:
            check_tuneplex({name: 1})
        assert refused.value.param == param and name in refused.value.message


def test_the_method_decides_which_file_format_it_takes():
    dpo = method_of(_request(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}))
    assert dpo.type == "dpo" and dpo.given == {"beta": 0.2}
    legacy = method_of(_request(hyperparameters={"n_epochs": 2}))
    assert legacy.type == "supervised" and legacy.given == {"n_epochs": 2}
    chat = registry_pb2.DatasetInfo(format=registry_pb2.DATASET_FORMAT_CHAT, num_examples=10)
    pairs = registry_pb2.DatasetInfo(format=registry_pb2.DATASET_FORMAT_PREFERENCE)
    check_format(dpo, pairs, "training_file")
    check_format(legacy, chat, "training_file")
    for method, info in ((dpo, chat), (legacy, pairs)):
        with pytest.raises(InvalidArgument) as refused:
            check_format(method, info, "training_file")
        assert refused.value.param == "training_file"
    with pytest.raises(InvalidArgument):
        method_of(_request(method={"type": "reinforcement"}))


def test_a_job_reads_back_as_openais_object_from_its_labels():
    job = trainer_pb2.Job(
        id="job-abc",
        state=trainer_pb2.JOB_STATE_SUCCEEDED,
        progress=trainer_pb2.Progress(trained_tokens=1234, eta_seconds=30),
        labels={
            names.OWNER_LABEL: "team-a",
            names.MODEL_LABEL: "base",
            names.TRAINING_FILE_LABEL: "file-1",
            names.SEED_LABEL: "7",
            names.FINE_TUNED_MODEL_LABEL: "ft:base:team-a::o1",
            names.METADATA_LABEL: '{"k":"v"}',
            names.METHOD_LABEL: "supervised",
            names.HYPERPARAMETERS_LABEL: '{"batch_size":2,"n_epochs":3,'
            '"learning_rate_multiplier":1.0}',
        },
    )
    job.create_time.FromSeconds(100)
    job.end_time.FromSeconds(200)
    shown = job_object(job)
    assert (shown.id, shown.status, shown.fine_tuned_model) == (
        "ftjob-abc",
        "succeeded",
        "ft:base:team-a::o1",
    )
    assert (shown.finished_at, shown.trained_tokens, shown.seed) == (200, 1234, 7)
    assert shown.estimated_finish is None and shown.metadata == {"k": "v"}
    assert shown.method == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {"batch_size": 2, "n_epochs": 3, "learning_rate_multiplier": 1.0}
        },
    }
    job.state = trainer_pb2.JOB_STATE_RUNNING
    running = job_object(job)
    assert running.fine_tuned_model is None
    assert running.estimated_finish is not None and running.estimated_finish > time.time()


# -- owners ----------------------------------------------------------------------------------


def test_the_owner_is_the_name_of_the_key_sent():
    keys = {"team-a": "sk-a", "team-b": "sk-b"}
    assert owner_of("Bearer sk-a", keys) == "team-a"
    assert owner_of("bearer sk-b", keys) == "team-b"
    assert owner_of(None, {}) == "local"
    for header in (None, "sk-a", "Bearer sk-c"):
        with pytest.raises(Unauthenticated):
            owner_of(header, keys)


def test_settings_name_the_single_key_default_and_check_the_names():
    settings = GatewaySettings(api_key="sk-0", api_keys={"team-a": "sk-a"})
    assert settings.owner_keys() == {"team-a": "sk-a", "default": "sk-0"}
    assert GatewaySettings(api_keys={"team-a": "sk-a"}, host="0.0.0.0").owner_keys()
    for bad in ({"Team:A": "sk"}, {"default": "sk"}, {"a": "sk", "b": "sk"}, {"a": ""}):
        with pytest.raises(ValidationError):
            GatewaySettings(api_keys=bad)
    with pytest.raises(ValidationError):
        GatewaySettings(host="0.0.0.0")


# -- fine-tuned models in the resolver -------------------------------------------------------

FINAL = "ft:smollm2:team-a:sql:o1"


def _owned(name: str, **labels: str) -> registry_pb2.ArtifactVersion:
    from tests.unit.test_gateway_resolver import adapter_version

    version = adapter_version(name)
    version.labels.update(
        {names.OWNER_LABEL: "team-a", names.FINE_TUNED_MODEL_LABEL: FINAL, **labels}
    )
    return version


@pytest.fixture
def owned_resolver(tmp_path):
    from tests.unit.test_gateway_resolver import AliasRegistry, make_resolver

    registry = AliasRegistry()
    registry.targets["ft-o1"] = _owned("ft-o1")
    registry.targets["ft-o1-step-3"] = _owned("ft-o1-step-3", **{names.CHECKPOINT_STEP_LABEL: "3"})
    return make_resolver(tmp_path, registry)


async def test_a_fine_tuned_name_resolves_to_its_adapter_for_its_owner_only(owned_resolver):
    resolved = await owned_resolver.resolve(FINAL, owner="team-a")
    assert resolved.adapter is not None and resolved.adapter.name == "ft-o1"
    checkpoint = await owned_resolver.resolve(f"{FINAL}:ckpt-step-3", owner="team-a")
    assert checkpoint.adapter is not None and checkpoint.adapter.name == "ft-o1-step-3"
    for model, owner in (
        (FINAL, "team-b"),
        ("ft-o1", "team-b"),  # nor by its registry name
        ("ft:smollm2:team-a:other:o1", "team-a"),  # only its whole name
        (f"{FINAL}:ckpt-step-4", "team-a"),
        ("ft:bad", "team-a"),
    ):
        with pytest.raises(NotFound) as missing:
            await owned_resolver.resolve(model, owner=owner)
        assert missing.value.code == "model_not_found"



async def test_the_operators_key_uses_every_owners_model_by_name(owned_resolver):
    """The trainer's eval workers sample with the operator's key (owner `default`): a team's
    eval run of its own fine-tuned model must be answered; teams stay apart (above)."""
    for model in (FINAL, "ft-o1", f"{FINAL}:ckpt-step-3"):
        resolved = await owned_resolver.resolve(model, owner="default")
        assert resolved.adapter is not None and resolved.adapter.name.startswith("ft-o1")


async def test_another_owners_unservable_model_reads_as_unknown_not_as_unservable(tmp_path):
    """Whether an adapter could be served (its rank, DoRA) must not tell another owner that
    it exists: the owner is checked first."""
    from tests.unit.test_gateway_resolver import AliasRegistry, make_resolver

    registry = AliasRegistry()
    version = _owned("ft-o1")
    version.adapter.rank = 64  # above the gateway's max_lora_rank
    registry.targets["ft-o1"] = version
    resolver = make_resolver(tmp_path, registry)
    for model in (FINAL, "ft-o1"):
        with pytest.raises(NotFound) as missing:
            await resolver.resolve(model, owner="team-b")
        assert missing.value.code == "model_not_found" and "rank" not in missing.value.message
    with pytest.raises(TuneplexError) as unservable:  # its owner is told why
        await resolver.resolve(FINAL, owner="team-a")
    assert "rank" in unservable.value.message

async def test_the_listing_shows_fine_tuned_models_to_their_owner_under_their_names(
    owned_resolver,
):
    from services.gateway.resolver import listed_name

    mine = [listed_name(a) for a, _ in await owned_resolver.servable_adapters("team-a")]
    assert sorted(mine) == [FINAL, f"{FINAL}:ckpt-step-3"]
    assert await owned_resolver.servable_adapters("team-b") == []


# -- the trainer as the routes see it --------------------------------------------------------


class _DownTrainer:
    def get_job(self, job_id: str) -> trainer_pb2.Job:
        raise Unavailable("failed to connect to all addresses; ipv4:127.0.0.1:50052")


async def test_a_trainer_outage_is_a_503_in_our_words_without_its_address():
    from services.gateway.fine_tuning.upstream import TrainerAccess
    from services.gateway.http_errors import retry_headers

    with pytest.raises(Unavailable) as down:
        await TrainerAccess(_DownTrainer).call("get_job", "job-x")
    assert "127.0.0.1" not in down.value.message and "trainer" in down.value.message
    assert retry_headers(down.value) is not None  # retry-after: the SDK waits and retries


async def test_without_a_trainer_the_job_routes_say_fine_tuning_is_off():
    from services.common.errors import FailedPrecondition
    from services.gateway.fine_tuning.upstream import TrainerAccess

    with pytest.raises(FailedPrecondition) as off:
        await TrainerAccess(None).call("get_job", "job-x")
    assert off.value.code == "fine_tuning_disabled"


@pytest.mark.parametrize(
    ("data", "examples"),
    [(b'{"a": 1}\n\n{"b": 2}\n', 2), (b'{"a": 1}\n{"b": 2}', 2), (b"", 0), (b"\n \n", 0),
     (b"x" * 3_000_000 + b"\ny", 2)],
)
def test_an_upload_is_copied_byte_for_byte_and_its_examples_counted(tmp_path, data, examples):
    """The count that refuses a short fine-tune file before anything is pushed; the long case
    spans several copy chunks."""
    import io

    from services.gateway.fine_tuning.files import _copy

    path = tmp_path / "data.jsonl"
    assert _copy(io.BytesIO(data), path) == examples
    assert path.read_bytes() == data



def test_a_team_key_may_not_use_the_admin_routes(tmp_path):
    """warm and refresh act on every owner's adapters: the operator's key only."""
    from fastapi.testclient import TestClient

    from services.gateway.app import build_app

    settings = GatewaySettings(home=tmp_path, api_key="sk-op", api_keys={"team-a": "sk-a"})
    http = TestClient(build_app(settings))  # no lifespan: refused before any work
    resp = http.post("/tuneplex/v1/refresh", json={"model": "ft-o1"},
                     headers={"authorization": "Bearer sk-a"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "operator_only"


def test_one_key_cannot_be_both_the_operators_and_a_teams():
    with pytest.raises(ValueError, match="give each key once"):
        GatewaySettings(api_key="sk-a", api_keys={"team-a": "sk-a"})


class _RefusingTrainer:
    def get_job(self, job_id: str) -> trainer_pb2.Job:
        raise Unauthenticated("invalid API key")


async def test_the_trainer_refusing_the_gateways_key_is_not_the_callers_401():
    """A 401 would make the SDK report the user's own key as wrong."""
    from services.gateway.fine_tuning.upstream import TrainerAccess

    with pytest.raises(Unavailable) as refused:
        await TrainerAccess(_RefusingTrainer).call("get_job", "job-x")
    assert "TUNEPLEX_GATEWAY_TRAINER_API_KEY" in refused.value.message


def test_metadata_at_openais_limits_fits_its_label_even_fully_escaped():
    from services.common.labels import check_labels
    from services.gateway.fine_tuning.jobs import metadata_label

    worst = {f"{i:02d}" + '"' * 62: '"' * 512 for i in range(16)}
    check_metadata(worst)
    check_labels({"openai.metadata": metadata_label(worst)})
    accented = {f"k{i}": "é" * 512 for i in range(16)}
    assert "é" in metadata_label(accented)  # kept as written, not as \u00e9


@pytest.mark.parametrize("method", ["dora", "full", "continued_pretraining"])
def test_a_method_whose_model_this_gateway_cannot_serve_is_refused(method):
    from services.gateway.fine_tuning.jobs import _Method, trainer_method

    with pytest.raises(InvalidArgument) as refused:
        trainer_method(_Method("supervised", {}), {"method": method})
    assert refused.value.param == "tuneplex.method" and "served" in refused.value.message
    assert trainer_method(_Method("supervised", {}), {"method": "qlora"}) == "qlora"


class _RecordingTrainer:
    def __init__(self) -> None:
        self.specs: list[trainer_pb2.TrainingSpec] = []

    def create_job(self, spec: trainer_pb2.TrainingSpec, labels=None) -> trainer_pb2.Job:
        self.specs.append(spec)
        job_spec = trainer_pb2.JobSpec(training=spec)
        return trainer_pb2.Job(id="job-1", spec=job_spec, labels=labels or {})


class _OneFile:
    async def version(self, owner: str, file_id: str, *, param: str = "file_id"):
        return registry_pb2.ArtifactVersion(
            name=file_id,
            labels={names.OWNER_LABEL: owner, names.PURPOSE_LABEL: "fine-tune"},
            dataset=registry_pb2.DatasetInfo(
                format=registry_pb2.DATASET_FORMAT_CHAT, num_examples=24
            ),
        )


class _AnyModel:
    async def resolve(self, kind: str, ref: str) -> registry_pb2.ArtifactVersion:
        return registry_pb2.ArtifactVersion(name=ref, version=1)


async def test_tuneplex_settings_reach_the_trainer_as_validated_not_as_sent():
    """JSON's "8" and 20.0 are accepted by the spec's validation; the wire gets 8 and 20, not
    a TypeError (a 500) while the spec is built."""
    from services.gateway.fine_tuning.jobs import FineTuningJobs
    from services.gateway.fine_tuning.upstream import TrainerAccess

    trainer = _RecordingTrainer()
    files: Any = _OneFile()  # the one FileStore method create calls
    jobs = FineTuningJobs(TrainerAccess(lambda: trainer), files, _AnyModel())
    request = _request(
        training_file="file-" + "a" * 24, tuneplex={"lora_r": "8", "max_steps": 20.0}
    )
    await jobs.create("team-a", request)
    spec = trainer.specs[0]
    assert spec.lora.r == 8 and spec.hyperparameters.max_steps == 20
