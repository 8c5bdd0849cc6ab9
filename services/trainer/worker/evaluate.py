"""Evaluation work: registry -> answers (gateway or local generation) -> graders -> registry.

An eval job pulls its pinned eval set and the SQLite databases its graders name, checks every
item against the graders before anything is generated (the pre-flight: a broken reference query
fails the job naming the item, rather than scoring every model 0 on it), gets each item's answer
through the gateway or from ``recipes/generate.py``, grades it and publishes an EVALUATION
version (``summary.json`` + ``results.jsonl``) whose lineage pins what was scored on what.

Resume: every graded item is appended to ``JOB_DIR/eval/results.jsonl`` as it finishes, so a
killed attempt's items are kept (with the attempt that graded them) and the next attempt grades
only the rest. A crash after publishing finds the published version (``publish_once``).

The functions below are also what a training job's end-of-run evaluation calls.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.client.registry import RegistryClient
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.eval_items import check_eval_item, item_messages
from services.common.eval_summary import EvalSummary
from services.evaluation.graders import (
    Grader,
    GraderResources,
    Judge,
    build_graders,
    judge_models,
)
from services.evaluation.runner import EvalProgress, ItemResult, run_eval
from services.evaluation.sampling import GatewaySampler, Sampler, SamplingConfig
from services.evaluation.summary import summarize, write_record
from services.trainer.artifacts import RegistryPullCache, dataset_file, version_ref
from services.trainer.worker.protocol import (
    GATEWAY_KEY_ENV,
    WorkerConfig,
    emit,
    worker_attempt,
)
from services.trainer.worker.publish import Publication, own_version, publish_once

EVAL_DIR = "eval"
RESULTS_NAME = "results.jsonl"
DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
# Progress events at most this often (each one is a store write and a stream message).
PROGRESS_EVERY_S = 0.5
GATEWAY_PROBE_TIMEOUT_S = 5.0
SET = "evaluation.eval_set"
GRADERS = "evaluation.graders"


@dataclass(frozen=True)
class EvalTarget:
    """What is evaluated."""

    model: str  # pinned name@version in the registry, or "" for an unpublished folder
    model_kind: str  # "adapter" | "model"
    base_model: str  # pinned name@version of the base (== model for a model)


@dataclass(frozen=True)
class PreparedEval:
    """An eval set ready to score: items parsed, graders built and pre-flighted."""

    items: list[dict[str, Any]]
    graders: list[Grader]
    specs: list[dict[str, Any]]
    eval_set: str  # pinned name@version
    databases: list[str]  # pinned name@version of each SQLite dataset, in spec order
    judge: Judge | None = None  # what score_model graders ask (closed after each run)


def read_items(path: Path, ref: str) -> list[dict[str, Any]]:
    """The items of an eval set file (the registry checked them on upload; checked again
    here because a worker must not guess at a line it cannot read)."""
    items: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        broken = check_eval_item(obj)
        if broken is not None:
            rule, why = broken
            raise FailedPrecondition(
                f"eval set {ref} line {n}: {why} (rule: {rule})", param=SET, code=rule
            )
        item_messages(obj)  # every item must give a conversation
        items.append(obj)
    if not items:
        raise FailedPrecondition(f"eval set {ref} has no items", param=SET, code="empty_eval_set")
    return items


def database_file(folder: Path, ref: str) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in DATABASE_SUFFIXES)
    if len(files) != 1:
        raise FailedPrecondition(
            f"dataset {ref} should hold one SQLite file, found {len(files)}",
            param=GRADERS,
            code="not_a_database",
        )
    return files[0]


def prepare_eval(
    client: RegistryClient,
    cache: RegistryPullCache,
    eval_set: str,
    graders: list[dict[str, Any]],
    databases: dict[str, str],
    *,
    judge: Judge | None = None,
) -> PreparedEval:
    """Pull the eval set and databases, parse the items, build the graders and pre-flight
    every item (``Grader.check_items``: InvalidArgument naming the item and the rule)."""
    del client  # pulls go through the cache, which holds the client
    found, folder = cache.fetch("dataset", eval_set, SET)
    pinned_set = version_ref(found)
    items = read_items(dataset_file(folder, pinned_set, SET), pinned_set)
    paths: dict[str, Path] = {}
    pinned_databases: list[str] = []
    for ref, pinned in databases.items():
        db, db_folder = cache.fetch("dataset", pinned, GRADERS)
        paths[ref] = database_file(db_folder, version_ref(db))
        pinned_databases.append(version_ref(db))
    built = build_graders(graders, GraderResources(databases=paths, judge=judge))
    for grader in built:
        grader.check_items(items)
    return PreparedEval(items, built, graders, pinned_set, pinned_databases, judge)


def graded_indexes(results_path: Path) -> set[int]:
    """Items an earlier attempt graded (whole lines only: a torn last line is not one)."""
    done: set[int] = set()
    if not results_path.is_file():
        return done
    for line in results_path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(int(json.loads(line)["index"]))
        except (ValueError, KeyError, TypeError):
            continue
    return done


class ProgressReporter:
    """``on_progress`` of the eval loop: progress events, at most every ``PROGRESS_EVERY_S``
    (and always the last)."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, p: EvalProgress) -> None:
        now = time.monotonic()
        if p.done < p.total and now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        emit(
            "progress",
            step=p.done,
            total_steps=p.total,
            running_score=p.running_score,
            eta_seconds=p.eta_seconds,
        )


async def _close(*clients: object) -> None:
    for client in clients:
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            await aclose()


def sample_and_grade(
    prepared: PreparedEval,
    sampler: Sampler,
    sampling: SamplingConfig,
    results_path: Path,
    *,
    concurrency: int,
    attempt: int,
    report_progress: bool = True,
) -> list[ItemResult]:
    """Every item answered and graded (resuming from ``results_path``); blocking."""
    results_path.parent.mkdir(parents=True, exist_ok=True)
    already = len(graded_indexes(results_path) & set(range(len(prepared.items))))
    if already:
        emit(
            "log",
            message=f"resuming: {already} of {len(prepared.items)} items already graded",
        )

    async def go() -> list[ItemResult]:
        try:
            return await run_eval(
                prepared.items,
                sampler,
                prepared.graders,
                sampling,
                results_path,
                concurrency=concurrency,
                attempt=attempt,
                on_progress=ProgressReporter() if report_progress else (lambda _: None),
            )
        finally:
            # HTTP clients belong to this event loop: closed in it (a later call gets new ones).
            await _close(sampler, prepared.judge)

    return asyncio.run(go())


class LoopBoundGateway:
    """A ``GatewaySampler`` (and ``Judge``) whose HTTP client is made in the event loop that
    uses it: each ``sample_and_grade`` runs its own loop, and pooled connections cannot
    outlive theirs."""

    def __init__(self, base_url: str, api_key: str | None, model: str) -> None:
        self.base_url, self.api_key, self.model = base_url, api_key, model
        self._client: GatewaySampler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _current(self) -> GatewaySampler:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = GatewaySampler(self.base_url, self.api_key, self.model)
            self._loop = loop
        return self._client

    async def sample(self, messages: list[dict[str, str]], sampling: SamplingConfig) -> str:
        return await self._current().sample(messages, sampling)

    async def complete(
        self, model: str, messages: list[dict[str, str]], sampling: SamplingConfig
    ) -> str:
        return await self._current().complete(model, messages, sampling)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def gateway_serves(gateway_url: str, api_key: str | None, model: str) -> bool:
    """Whether the gateway lists ``model`` (``GET /v1/models/{model}`` answers 200)."""
    url = gateway_url.rstrip("/").removesuffix("/v1") + f"/v1/models/{model}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        return httpx.get(url, headers=headers, timeout=GATEWAY_PROBE_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return False


def make_sampler(
    target: EvalTarget,
    backend: str,
    *,
    gateway_url: str,
    gateway_api_key: str | None,
    cache: RegistryPullCache,
    adapter_dir: Path | None = None,
) -> tuple[Sampler, str]:
    """(sampler, "gateway" | "local"). ``auto``: the gateway when it serves ``target.model``,
    else generation in this worker on the pulled base (+ adapter, or ``adapter_dir``)."""
    if backend == "gateway" or (
        backend == "auto"
        and target.model
        and gateway_serves(gateway_url, gateway_api_key, target.model)
    ):
        if not target.model:
            raise InvalidArgument(
                "an unpublished model can only be evaluated with backend local",
                param="evaluation.backend",
                code="invalid_spec",
            )
        return LoopBoundGateway(gateway_url, gateway_api_key, target.model), "gateway"
    if backend == "auto":
        emit("log", message=f"the gateway does not serve {target.model}: generating in the worker")
    from services.trainer.recipes.generate import LocalSampler

    _, model_dir = cache.fetch("model", target.base_model, "evaluation.model")
    if adapter_dir is None and target.model_kind == "adapter" and target.model:
        _, adapter_dir = cache.fetch("adapter", target.model, "evaluation.model")
    return LocalSampler(model_dir, adapter_dir), "local"


def publish_evaluation(
    client: RegistryClient,
    summary: EvalSummary,
    results: list[ItemResult],
    *,
    name: str,
    job_id: str,
    folder: Path,
    labels: Mapping[str, str],
) -> str:
    """Publish the EVALUATION version once per job, carrying the job's ``labels``; returns
    its ``name@version``."""

    def record() -> Publication:
        shutil.rmtree(folder, ignore_errors=True)  # what a killed attempt left half-written
        folder.mkdir(parents=True)
        write_record(folder, summary, results)
        evaluated = "adapter" if summary.model_kind == "adapter" else "base_model"
        return Publication(
            folder=folder,
            description=f"{summary.model} on {summary.eval_set}: score {summary.score:.3f} "
            f"[{summary.ci_low:.3f}, {summary.ci_high:.3f}]",
            source=f"trainer job {job_id}",
            lineage={
                "job_id": job_id,
                evaluated: summary.model,
                "eval_set": summary.eval_set,
                "databases": list(summary.databases),
            },
            metrics=result_metrics(summary),
            labels=labels,
        )

    ref = publish_once(client, "evaluation", name, job_id, record)
    assert ref is not None  # an evaluation runs as one process, which publishes
    return ref


def result_metrics(summary: EvalSummary) -> dict[str, float]:
    return {
        "score": summary.score,
        "ci_low": summary.ci_low,
        "ci_high": summary.ci_high,
        "num_errors": float(summary.num_errors),
        "items_per_second": summary.items_per_second,
    }


def run(config: WorkerConfig, job_dir: Path, client: RegistryClient) -> str:
    """Score the pinned model on the pinned eval set and publish; returns ``name@version``."""
    import os

    e = config.evaluation
    assert e is not None
    done = own_version(client, "evaluation", e.output_name, config.job_id)
    if done is not None:  # an earlier attempt published, then died before it said so
        emit("result", metrics=dict(done.lineage.metrics))
        return _already_published(done)
    emit("state", state="VALIDATING", message=f"fetching {e.eval_set} and checking its items")
    cache = RegistryPullCache(client, config.cache_dir)
    gateway_key = os.environ.get(GATEWAY_KEY_ENV) or None
    judge = (
        LoopBoundGateway(config.gateway_url, gateway_key, "") if judge_models(e.graders) else None
    )
    prepared = prepare_eval(client, cache, e.eval_set, e.graders, e.databases, judge=judge)
    target = EvalTarget(e.model, e.model_kind, e.base_model)
    sampler, backend = make_sampler(
        target, e.backend, gateway_url=config.gateway_url, gateway_api_key=gateway_key, cache=cache
    )
    emit(
        "state",
        state="RUNNING",
        message=f"scoring {e.model} on {len(prepared.items)} items of {prepared.eval_set} "
        f"({backend})",
    )
    started = time.monotonic()
    results = sample_and_grade(
        prepared,
        sampler,
        e.sampling,
        job_dir / EVAL_DIR / RESULTS_NAME,
        concurrency=e.concurrency,
        attempt=worker_attempt(),
    )
    summary = summarize(
        results,
        prepared.specs,
        model=e.model,
        model_kind=e.model_kind,
        eval_set=prepared.eval_set,
        databases=prepared.databases,
        sampling=e.sampling,
        backend=backend,
        job_id=config.job_id,
        seconds=time.monotonic() - started,
    )
    emit("result", metrics=result_metrics(summary))
    emit(
        "log",
        message=f"score {summary.score:.3f} [{summary.ci_low:.3f}, {summary.ci_high:.3f}] on "
        f"{summary.num_items} items ({summary.num_errors} errors); publishing {e.output_name}",
    )
    return publish_evaluation(
        client,
        summary,
        results,
        name=e.output_name,
        job_id=config.job_id,
        folder=job_dir / "output",
        labels=config.labels,
    )


def _already_published(version: Any) -> str:
    ref = version_ref(version)
    emit("log", message=f"an earlier attempt published {ref}")
    emit("published", output=ref, metrics=dict(version.lineage.metrics))
    return ref
