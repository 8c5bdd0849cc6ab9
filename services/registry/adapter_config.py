"""The facts of an IA3/LoHa/LoKr ``adapter_config.json`` (LoRA's are parsed by
``validation.adapter_info``), and the parts every type shares.

LoHa and LoKr scale their update by ``alpha / r`` as LoRA does, under the keys ``r`` and
``alpha``; IA3 has neither (it learns one vector per module), so its rank and alpha are 0.
"""

from __future__ import annotations

from collections.abc import Callable

from services.common.errors import InvalidArgument, shown
from services.common.stubs import registry_pb2

Bad = Callable[[str], InvalidArgument]


def _names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(m, str) for m in value)


def parse_targets(cfg: dict, bad: Bad) -> list[str]:
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]  # PEFT allows one regex string
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise bad("'target_modules' must be a non-empty list of module names")
    return targets


def parse_modules_to_save(cfg: dict, bad: Bad) -> list[str]:
    to_save = cfg.get("modules_to_save") or []
    if not _names(to_save):
        raise bad("'modules_to_save' must be a list of module names")
    return to_save


def _rank_and_alpha(cfg: dict, bad: Bad) -> tuple[int, float]:
    rank, alpha = cfg.get("r"), cfg.get("alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise bad(f"'r' must be a positive integer, got {shown(rank, 40)}")
    # alpha 0 would scale the update to nothing: an adapter that cannot change the model.
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise bad(f"'alpha' must be a positive number, got {shown(alpha, 40)}")
    return rank, float(alpha)


def _check_feedforward(cfg: dict, bad: Bad) -> None:
    feedforward = cfg.get("feedforward_modules") or []
    if isinstance(feedforward, str):
        return  # a regex, matched by PEFT against module names
    if not _names(feedforward):
        raise bad("'feedforward_modules' must be a list of module names or one regex")
    targets = cfg.get("target_modules")
    # PEFT's own rule, where both are lists (a regex target is matched by PEFT at load).
    outside = sorted(set(feedforward) - set(targets)) if isinstance(targets, list) else []
    if outside:
        raise bad(
            "'feedforward_modules' must be a subset of 'target_modules'; "
            f"{shown(', '.join(outside), 80)} is not targeted"
        )


def merged_adapter_info(cfg: dict, peft_type: str, bad: Bad) -> registry_pb2.AdapterInfo:
    """The facts of an adapter the gateway serves through a merge (IA3, LoHa, LoKr)."""
    targets = parse_targets(cfg, bad)
    rank, alpha = (0, 0.0) if peft_type == "IA3" else _rank_and_alpha(cfg, bad)
    if peft_type == "IA3":
        _check_feedforward(cfg, bad)
    return registry_pb2.AdapterInfo(
        peft_type=peft_type,
        rank=rank,
        alpha=alpha,
        target_modules=sorted(targets),
        modules_to_save=parse_modules_to_save(cfg, bad),
        task_type=str(cfg.get("task_type") or ""),
    )
