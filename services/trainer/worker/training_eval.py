"""The end-of-run evaluation of a training job (``TrainingConfig.evaluation``).

Three steps, in the worker that trained (rank 0), with the eval machinery of eval jobs
(``worker/evaluate.py``):

1. **Pre-flight**, before training: the pinned eval set and databases are pulled and every item
   checked against the graders, so a broken eval set fails the job before hours of training.
2. **Best checkpoint** (``each_checkpoint``), after training and before publishing: every
   complete checkpoint and the final weights are scored with generation in the worker on the
   adapter folder; the best score wins (ties: the later step) and that folder is published, its
   training report saying which step, its score and why.
3. **Published version**: scored through the gateway when it serves the version, else in the
   worker, and recorded as an EVALUATION version; the job's metrics get ``eval_score``,
   ``eval_ci_low``, ``eval_ci_high``. With ``promote_alias`` the registry's gate is asked to
   move the alias (``services.client.promotion``); a refusal leaves the version published and
   is said in the job's log with both scores (metric ``promoted`` 0).

Resume: each candidate's graded items go to ``JOB_DIR/eval/step-<N>.jsonl`` and the published
version's to ``JOB_DIR/eval/published.jsonl`` as they finish, so a killed attempt's items are
not graded again; the EVALUATION version is published once per job.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from services.client.gateway import GatewayAdmin
from services.client.promotion import promote
from services.client.registry import RegistryClient
from services.common.errors import TuneplexError, Unavailable
from services.common.refs import parse_ref
from services.common.training_spec import TrainingConfig, TrainingEvalConfig
from services.evaluation.graders import judge_models
from services.evaluation.runner import ItemResult
from services.evaluation.sampling import SamplingConfig
from services.evaluation.summary import summarize
from services.trainer.artifacts import RegistryPullCache
from services.trainer.checkpoints import complete_checkpoints
from services.trainer.eval_spec import DEFAULT_CONCURRENCY
from services.trainer.worker.evaluate import (
    EVAL_DIR,
    EvalTarget,
    LoopBoundGateway,
    PreparedEval,
    gateway_serves,
    make_sampler,
    prepare_eval,
    publish_evaluation,
    result_metrics,
    sample_and_grade,
)
from services.trainer.worker.protocol import (
    CHECKPOINTS_DIR,
    GATEWAY_KEY_ENV,
    WorkerConfig,
    emit,
    worker_attempt,
)

PUBLISHED_RESULTS = "published.jsonl"
# The files of a run's output that say how it was trained, not what its weights are: a
# published checkpoint keeps the run's.
RUN_FILES = ("training_report.json", "loss_curve.png")


@dataclass(frozen=True)
class Candidate:
    """Weights that may be published: a complete checkpoint, or the run's final output."""

    step: int
    folder: Path

    @property
    def results_name(self) -> str:
        return f"step-{self.step}.jsonl"


@dataclass(frozen=True)
class Choice:
    """The candidate to publish and what the training report says about it."""

    candidate: Candidate
    score: float
    because: str
    scores: list[dict[str, float]]


def sampling_of(evaluation: TrainingEvalConfig) -> SamplingConfig:
    return SamplingConfig(
        temperature=evaluation.temperature,
        max_tokens=evaluation.max_tokens,
        top_p=evaluation.top_p,
        seed=evaluation.seed,
    )


def mean_score(results: list[ItemResult]) -> float:
    return sum(r.score for r in results) / len(results) if results else 0.0


def best_of(scored: list[tuple[Candidate, float]]) -> tuple[Candidate, float]:
    """The highest score; of equal scores the later step (it trained on more)."""
    return max(scored, key=lambda pair: (pair[1], pair[0].step))


def candidates(checkpoint_dir: Path, output: Path, final_step: int) -> list[Candidate]:
    """Every complete checkpoint before the final step, then the final weights (the
    checkpoint the Trainer saves at the last step holds those same weights)."""
    found = [
        Candidate(c.step, c.path)
        for c in complete_checkpoints(checkpoint_dir)
        if c.step < final_step
    ]
    return [*found, Candidate(final_step, output)]


def publication_folder(choice: Candidate, output: Path, folder: Path) -> Path:
    """``output`` when it won; else a copy of it whose weight files come from the checkpoint
    (every file of the output the checkpoint also has, but the run's report and curve). The
    checkpoint's optimizer state and Trainer pickles stay behind."""
    if choice.folder == output:
        return output
    shutil.rmtree(folder, ignore_errors=True)  # what a killed attempt left half-copied
    shutil.copytree(output, folder)
    for path in output.rglob("*"):
        relative = path.relative_to(output)
        theirs = choice.folder / relative
        if path.is_file() and theirs.is_file() and relative.as_posix() not in RUN_FILES:
            shutil.copy2(theirs, folder / relative)
    return folder


class TrainingEvaluation:
    """The end-of-run evaluation of one training job attempt (rank 0)."""

    def __init__(
        self,
        config: WorkerConfig,
        job_dir: Path,
        client: RegistryClient,
        cache: RegistryPullCache,
    ):
        training = config.training
        assert training is not None and training.evaluation is not None
        self.training: TrainingConfig = training
        self.evaluation: TrainingEvalConfig = training.evaluation
        self.config, self.job_dir, self.client, self.cache = config, job_dir, client, cache
        self.gateway_key = os.environ.get(GATEWAY_KEY_ENV) or None
        self.sampling = sampling_of(self.evaluation)
        self.results_dir = job_dir / EVAL_DIR
        self.attempt = worker_attempt()
        self.prepared = self._prepare()
        self.choice: Choice | None = None

    def _prepare(self) -> PreparedEval:
        e = self.evaluation
        graders = list(e.graders)
        judge = (
            LoopBoundGateway(self.config.gateway_url, self.gateway_key, "")
            if judge_models(graders)
            else None
        )
        try:
            prepared = prepare_eval(
                self.client, self.cache, e.eval_set, graders, e.databases, judge=judge
            )
        except TuneplexError as exc:
            # Eval jobs name `evaluation.*`; here that spec sits in the training spec.
            if not (exc.param or "").startswith("evaluation."):
                raise
            raise type(exc)(exc.message, param=f"training.{exc.param}", code=exc.code) from None
        emit(
            "log",
            message=f"eval set {prepared.eval_set}: {len(prepared.items)} items checked against "
            f"{len(prepared.graders)} grader(s)",
        )
        return prepared

    def _score(
        self, target: EvalTarget, backend: str, results: Path, adapter_dir: Path | None = None
    ) -> tuple[list[ItemResult], str, float]:
        """(results, backend used, seconds) of ``target`` on the eval set."""
        started = time.monotonic()
        sampler, used = make_sampler(
            target,
            backend,
            gateway_url=self.config.gateway_url,
            gateway_api_key=self.gateway_key,
            cache=self.cache,
            adapter_dir=adapter_dir,
        )
        try:
            graded = sample_and_grade(
                self.prepared,
                sampler,
                self.sampling,
                results,
                concurrency=DEFAULT_CONCURRENCY,
                attempt=self.attempt,
                # The job's progress counts training steps: items are said in log lines.
                report_progress=False,
            )
        finally:
            del sampler
            gc.collect()  # a local sampler holds a model: free it before the next one loads
        return graded, used, time.monotonic() - started

    def choose_checkpoint(self, output: Path, final_step: int, base_model: str) -> Choice:
        """Score every candidate with generation in the worker; the best one."""
        found = candidates(self.job_dir / CHECKPOINTS_DIR, output, final_step)
        emit(
            "log",
            message=f"scoring {len(found)} checkpoints on {self.prepared.eval_set} to publish "
            "the best",
        )
        target = EvalTarget(model="", model_kind="adapter", base_model=base_model)
        scored: list[tuple[Candidate, float]] = []
        for candidate in found:
            results, _, _ = self._score(
                target,
                "local",
                self.results_dir / candidate.results_name,
                adapter_dir=candidate.folder,
            )
            score = mean_score(results)
            scored.append((candidate, score))
            emit("log", message=f"checkpoint at step {candidate.step}: score {score:.3f}")
        best, score = best_of(scored)
        self.choice = Choice(
            candidate=best,
            score=score,
            because=f"best of {len(found)} checkpoints on {self.prepared.eval_set} by score",
            scores=[{"step": c.step, "score": s} for c, s in scored],
        )
        emit("log", message=f"publishing step {best.step}: {self.choice.because}")
        return self.choice

    def finish(self, published: str) -> dict[str, float]:
        """Score the published version, record the evaluation, promote; the job's final
        metrics (the training metrics the version carries, with the evaluation's)."""
        version = self.client.resolve(self.training.output_kind, published)
        metrics = dict(version.lineage.metrics)
        kind = self.training.output_kind
        base = self.training.base_model if kind == "adapter" else published
        target = EvalTarget(model=published, model_kind=kind, base_model=base)
        results_path = self.results_dir / PUBLISHED_RESULTS
        results, backend, seconds = self._score_published(target, results_path)
        summary = summarize(
            results,
            self.prepared.specs,
            model=published,
            model_kind=kind,
            eval_set=self.prepared.eval_set,
            databases=self.prepared.databases,
            sampling=self.sampling,
            backend=backend,
            job_id=self.config.job_id,
            seconds=seconds,
        )
        record = publish_evaluation(
            self.client,
            summary,
            results,
            name=parse_ref(self.prepared.eval_set).name,
            job_id=self.config.job_id,
            folder=self.job_dir / "eval-record",
            labels=self.config.labels,
        )
        emit(
            "log",
            message=f"{published} scores {summary.score:.3f} [{summary.ci_low:.3f}, "
            f"{summary.ci_high:.3f}] on {summary.eval_set} ({backend}); recorded as {record}",
        )
        metrics |= {f"eval_{k}": v for k, v in result_metrics(summary).items()}
        if self.evaluation.promote_alias:
            metrics["promoted"] = float(self._promote(published))
        emit("result", metrics=metrics)
        # Publishing the record named it the job's output; the job's output is the version.
        emit("published", output=published, metrics=metrics)
        return metrics

    def _score_published(
        self, target: EvalTarget, results_path: Path
    ) -> tuple[list[ItemResult], str, float]:
        """Through the gateway when it serves the version; else in the worker, where the
        checkpoint just scored (the same weights, sampler and settings) gives the same answers:
        its graded items are taken over rather than generated again."""
        served = gateway_serves(self.config.gateway_url, self.gateway_key, target.model)
        if not served and self.choice is not None and not results_path.exists():
            scored = self.results_dir / self.choice.candidate.results_name
            if scored.is_file():
                results_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(scored, results_path)
        return self._score(target, "gateway" if served else "local", results_path)

    def _promote(self, published: str) -> bool:
        """Ask the gate to move the alias; True when it moved. Only a registry that cannot be
        reached fails the attempt (it is retried); any refusal is the job's news, not its
        failure."""
        e = self.evaluation
        gateway = GatewayAdmin(self.config.gateway_url, api_key=self.gateway_key)
        try:
            response = promote(
                self.client,
                None,  # the evaluations it compares exist or are refused: no eval jobs here
                gateway,
                kind=self.training.output_kind,
                ref=published,
                alias=e.promote_alias,
                eval_set=self.prepared.eval_set,
                graders=list(e.graders),
                margin=e.promote_margin,
                say=lambda message: emit("log", message=message),
            )
        except Unavailable:
            raise
        except TuneplexError as exc:
            emit("log", message=f"not promoted to {e.promote_alias}: {exc.message}")
            return False
        finally:
            gateway.close()
        name = parse_ref(published).name
        before = response.previous_version
        moved_from = f" (was {name}@{before})" if before else ""
        emit("log", message=f"promoted {published} to {name}@{e.promote_alias}{moved_from}")
        return True
