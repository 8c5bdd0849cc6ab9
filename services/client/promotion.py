"""Promote a version to an alias through the evaluation gate, doing what the gate needs first.

The registry's ``PromoteAlias`` only compares evaluations that exist. This flow makes them
exist: it finds the candidate's and the holder's evaluations on the eval set, measured with
the same grader specs (the ones given, else those of the newest evaluation there is), runs the
missing ones as eval jobs on the trainer and waits for them, warms the candidate on the
gateway's engines that serve the holder (so the first request after the move does not pay
the load), asks the registry to move the alias, and has the gateway re-resolve the alias.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.client.registry import RegistryClient
from services.client.trainer import SAMPLING_SETTINGS, TrainerClient, eval_spec, state_name
from services.common.errors import FailedPrecondition, InvalidArgument, TuneplexError, shown
from services.common.eval_summary import SUMMARY_FILE, graders_digest
from services.common.stubs import registry_pb2, trainer_pb2

if TYPE_CHECKING:
    from services.client.gateway import GatewayAdmin

Say = Callable[[str], None]


def promote(
    registry: RegistryClient,
    trainer: TrainerClient | None,
    gateway: GatewayAdmin | None,
    *,
    kind: str,
    ref: str,
    alias: str,
    eval_set: str,
    graders: list[dict[str, Any]] | None,
    margin: float,
    say: Say,
    eval_settings: dict[str, Any] | None = None,
) -> registry_pb2.PromoteAliasResponse:
    """Move ``alias`` of ``ref``'s artifact to ``ref``'s version if its evaluation on
    ``eval_set`` beats the holder's by ``margin``; run the evaluations that are missing
    (``trainer`` None: refuse instead). ``gateway`` None: no warm-up, no refresh.

    A missing evaluation is run with the sampling of the evaluation it is compared with (so
    both are measured alike), else with ``eval_settings`` (``services.client.trainer.eval_spec``
    settings: sampling, backend, concurrency), else the trainer's defaults."""
    candidate = registry.resolve(kind, ref)
    name, version = candidate.name, candidate.version
    alias = alias_of(name, alias)
    cand_ref = f"{name}@{version}"
    pinned_set = _eval_set(registry, eval_set)
    aliases = registry.get(kind, name).aliases
    holder = aliases[alias] if alias in aliases else 0
    if holder == version:
        say(f"{name}@{alias} is {cand_ref} already")
        return registry.promote(kind, name, alias, version, pinned_set, margin=margin)
    holder_ref = f"{name}@{holder}" if holder else ""

    found = {m: registry.evaluations(kind, m, pinned_set) for m in (cand_ref, holder_ref) if m}
    newest = sorted(
        (e for evs in found.values() for e in evs),
        key=lambda e: (e.create_time.seconds, e.create_time.nanos),
        reverse=True,
    )
    specs: list[dict[str, Any]] | None = None
    if graders:
        specs = normalised_graders(graders)
        sha = graders_digest(specs)
    elif newest:
        sha = newest[0].evaluation.graders_sha256
    else:
        who = f"{cand_ref} nor {holder_ref} ({alias})" if holder_ref else cand_ref
        raise InvalidArgument(
            f"{'neither ' if holder_ref else ''}{who} has {'an' if holder_ref else 'no'} "
            f"evaluation on {pinned_set}, so there are no graders to reuse: give them with "
            "--grader FILE",
            param="graders",
        )
    # The evaluation a missing one is compared with: its graders and sampling are reused.
    reference = next((e for e in newest if e.evaluation.graders_sha256 == sha), None)
    reference_summary: dict[str, Any] | None = None
    for model, evaluations in found.items():
        if any(e.evaluation.graders_sha256 == sha for e in evaluations):
            continue
        if trainer is None:
            raise FailedPrecondition(
                f"no evaluation of {model} on {pinned_set} with graders {sha[:12]}: run "
                f"`tuneplex evals run --model {model} --data {pinned_set} --grader FILE` first",
                param="eval_set",
                code="evaluation_missing",
            )
        if reference is not None and reference_summary is None:
            reference_summary = _summary_of(registry, reference)
        settings = dict(eval_settings or {})
        if reference_summary is not None:
            specs = specs or list(reference_summary["graders"])
            sampling = reference_summary.get("sampling") or {}
            settings.update({k: v for k, v in sampling.items() if k in SAMPLING_SETTINGS})
        assert specs is not None  # given, or the reference's (there is one when none given)
        _run_evaluation(trainer, eval_spec(model, pinned_set, specs, **settings), say)

    if gateway is not None and holder_ref and kind == "adapter":
        _warm(gateway, cand_ref, f"{name}@{alias}", say)
    response = registry.promote(kind, name, alias, version, pinned_set, sha, margin)
    if gateway is not None and kind == "adapter":
        try:
            gateway.refresh(f"{name}@{alias}")
        except TuneplexError as exc:
            say(f"gateway: could not refresh {name}@{alias} ({exc.message}); it re-resolves "
                "the alias when its cache expires")
    return response


def alias_of(name: str, alias: str) -> str:
    """``prod`` or ``sql-lora@prod`` -> ``prod``; an alias of another artifact is refused."""
    other, sep, bare = alias.partition("@")
    if not sep:
        return alias
    if other != name:
        raise InvalidArgument(
            f"--alias {shown(alias)} names an alias of another artifact ({shown(other)}), but "
            f"the version to promote is {name}'s: give the alias alone, e.g. --alias "
            f"{bare[:64]}",
            param="alias",
        )
    return bare


def normalised_graders(graders: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grader specs with defaults filled, as the eval worker records them: their digest
    is what evaluations are matched on."""
    from services.evaluation.graders import validate_graders

    return validate_graders(list(graders))


def _eval_set(registry: RegistryClient, ref: str) -> str:
    version = registry.resolve("dataset", ref)
    if version.dataset.format != registry_pb2.DATASET_FORMAT_EVAL:
        raise FailedPrecondition(
            f"dataset {version.name}@{version.version} is not an eval set (its lines have no "
            "'input'): promotions are gated on an eval set",
            param="eval_set",
            code="eval_set_invalid",
        )
    return f"{version.name}@{version.version}"


def _summary_of(
    registry: RegistryClient, evaluation: registry_pb2.ArtifactVersion
) -> dict[str, Any]:
    """An evaluation's summary.json: the grader specs and sampling it was measured with."""
    with tempfile.TemporaryDirectory(prefix="tuneplex-eval-") as tmp:
        ref = f"{evaluation.name}@{evaluation.version}"
        registry.pull("evaluation", ref, Path(tmp) / "evaluation")
        summary: dict[str, Any] = json.loads((Path(tmp) / "evaluation" / SUMMARY_FILE).read_text())
    return summary


def _run_evaluation(trainer: TrainerClient, spec: trainer_pb2.EvalSpec, say: Say) -> None:
    model, eval_set = spec.model, spec.eval_set
    job = trainer.create_job(trainer_pb2.JobSpec(evaluation=spec))
    say(f"evaluating {model} on {eval_set}: job {job.id}")
    for event in trainer.stream_events(job.id):
        kind = event.WhichOneof("kind")
        if kind == "state_changed":
            say(f"  {state_name(event.state_changed.state)}: {event.state_changed.message}")
        elif kind == "progress" and event.progress.total_steps:
            p = event.progress
            if p.step == p.total_steps or p.step % max(1, p.total_steps // 5) == 0:
                say(f"  {p.step}/{p.total_steps} items, running score {p.running_score:.3f}")
    job = trainer.get_job(job.id)
    if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        why = f" ({job.error.code}): {job.error.message}" if job.error.message else ""
        raise FailedPrecondition(
            f"the evaluation of {model} on {eval_set} (job {job.id}) ended "
            f"{state_name(job.state)}{why}; the alias did not move",
            param="eval_set",
            code="evaluation_failed",
        )
    say(f"evaluated {model}: {job.output}")


def _warm(gateway: GatewayAdmin, model: str, replaces: str, say: Say) -> None:
    """Best effort: a gateway that is down or cannot load the candidate does not block the
    promotion (it loads the adapter on the first request instead)."""
    try:
        answer = gateway.warm(model, replaces=replaces)
    except TuneplexError as exc:
        say(f"gateway: could not warm {model} ({exc.message}); promoting anyway")
        return
    loaded = list(answer.get("loaded_on") or [])
    already = list(answer.get("already_on") or [])
    if loaded or already:
        say(f"gateway: {model} loaded on {', '.join(loaded + already)}")
    else:
        say(f"gateway: no engine holds {replaces}; {model} loads on its first request")
