"""The promotion gate: an alias moves to a candidate version only if the candidate's evaluation
on an eval set scores at least the current holder's plus a margin.

Both evaluations must be of the same eval-set version and the same grader specs (equal
``graders_sha256``): a score is only comparable with one measured the same way. The decision is
taken on what the alias points at now, and the move is a compare-and-set on that holder, so a
move made meanwhile is never overwritten by a decision about another version (``ABORTED``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, shown
from services.common.refs import check_version
from services.common.stubs import registry_pb2
from services.registry import convert
from services.registry.metadata import ArtifactRow, MetadataStore, VersionRow
from services.registry.names import Ref, check_alias, check_name, kind_name, parse_ref

PROMOTABLE = ("adapter", "model")
# Scores are means of floats: equal-looking scores may differ in the last bits.
SCORE_EPSILON = 1e-9


@dataclass(frozen=True)
class Promotion:
    artifact: ArtifactRow
    candidate_evaluation: VersionRow | None
    holder_evaluation: VersionRow | None
    previous_version: int


def promote(metadata: MetadataStore, request: registry_pb2.PromoteAliasRequest) -> Promotion:
    """Blocking (metadata calls): run it in a worker thread."""
    kind = kind_name(request.kind)
    if kind not in PROMOTABLE:
        raise InvalidArgument(
            f"only adapters and models can be promoted, not a{'n' if kind[0] in 'ae' else ''} "
            f"{kind}",
            param="kind",
        )
    name, alias = check_name(request.name), check_alias(request.alias)
    version = check_version(request.version)
    margin = request.margin
    if not math.isfinite(margin) or not 0.0 <= margin <= 1.0:
        raise InvalidArgument(
            f"margin must be a score difference in [0, 1], got {margin!r}", param="margin"
        )
    if not request.eval_set:
        raise InvalidArgument(
            "eval_set is required: the eval set both versions are scored on", param="eval_set"
        )
    eval_ref = parse_ref(request.eval_set, param="eval_set")
    candidate = metadata.resolve(kind, Ref(name, version=version))  # unknown: NOT_FOUND
    eval_set = _eval_set(metadata, eval_ref, request.eval_set)
    holder = metadata.get_artifact(kind, name).aliases.get(alias)
    if holder == version:
        # Already there: nothing to decide, nothing to move.
        return Promotion(metadata.get_artifact(kind, name), None, None, holder)

    cand_ref = f"{name}@{candidate.version}"
    found = metadata.evaluations(cand_ref, kind, eval_set, request.graders_sha256)
    if not found:
        with_graders = (
            f" with graders {request.graders_sha256[:12]}" if request.graders_sha256 else ""
        )
        raise FailedPrecondition(
            f"no evaluation of {cand_ref} on {eval_set}{with_graders}: run `tuneplex evals run "
            f"--model {cand_ref} --data {eval_set} --grader FILE` first, or `tuneplex {kind}s "
            "promote`, which runs the missing evaluations",
            param="eval_set",
            code="evaluation_missing",
        )
    cand_eval = found[0]
    cand_info = convert.version_to_proto(cand_eval).evaluation
    if holder is None:
        artifact = metadata.move_alias_if(kind, name, alias, version, expected=None)
        return Promotion(artifact, cand_eval, None, 0)

    holder_ref = f"{name}@{holder}"
    sha = cand_info.graders_sha256
    held = metadata.evaluations(holder_ref, kind, eval_set, sha)
    if not held:
        raise FailedPrecondition(
            f"no evaluation of {holder_ref} ({alias}) on {eval_set} with the graders of "
            f"{cand_ref}'s evaluation ({sha[:12]}); scores of other graders are not comparable. "
            f"Run `tuneplex evals run --model {holder_ref} --data {eval_set}` with the same "
            "--grader files, or promote with `tuneplex "
            f"{kind}s promote`, which runs the missing evaluations",
            param="eval_set",
            code="evaluation_missing",
        )
    holder_eval = held[0]
    holder_info = convert.version_to_proto(holder_eval).evaluation
    needs = holder_info.score + margin
    if cand_info.score + SCORE_EPSILON < needs:
        raise FailedPrecondition(
            f"{cand_ref} scores {_scored(cand_info)} on {eval_set}, {holder_ref} ({alias}) "
            f"{_scored(holder_info)}; needs >= {needs:.2f} (margin {margin:g}); the alias stays "
            f"on {holder}. Improve the candidate and evaluate it again, lower the margin, or "
            f"move the alias by hand: `tuneplex {kind}s alias {name} {alias} {version}`",
            param="version",
            code="promotion_refused",
        )
    artifact = metadata.move_alias_if(kind, name, alias, version, expected=holder)
    return Promotion(artifact, cand_eval, holder_eval, holder)


def _scored(info: registry_pb2.EvaluationInfo) -> str:
    return f"{info.score:.2f} [{info.ci_low:.2f}, {info.ci_high:.2f}]"


def _eval_set(metadata: MetadataStore, ref: Ref, given: str) -> str:
    """The eval-set version ``ref`` names now, as ``name@version``; it must be an EVAL dataset."""
    try:
        row = metadata.resolve("dataset", ref)
    except NotFound:
        raise FailedPrecondition(
            f"eval set {shown(given)} is not a dataset in the registry: upload it first "
            "(`tuneplex datasets upload`)",
            param="eval_set",
            code="eval_set_not_found",
        ) from None
    info = convert.version_to_proto(row).dataset
    if info.format != registry_pb2.DATASET_FORMAT_EVAL:
        raise FailedPrecondition(
            f"dataset {row.name}@{row.version} is not an eval set (its lines have no 'input'): "
            "promotions are gated on an eval set",
            param="eval_set",
            code="eval_set_invalid",
        )
    return f"{row.name}@{row.version}"
