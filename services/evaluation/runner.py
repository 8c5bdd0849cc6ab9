"""The eval loop: sample every item's answer, grade it, append the result to a JSONL file.

The file is the resume point: a restarted attempt keeps the lines already there (with the
attempt that wrote them) and samples only the rest, so a preempted job loses at most the items
in flight. Each line is flushed and fsynced as it is written; a line torn by a crash is the
last one, and is dropped. One item's failure (the sampler, a grader) is that item's error with
score 0, never the run's.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from services.common.eval_items import item_messages
from services.evaluation.graders.base import Grader, GradeResult, Sample
from services.evaluation.sampling import Sampler, SamplingConfig

SAMPLING_FAILED = "sampling_failed"
GRADER_FAILED = "grader_failed"
_REASON_CHARS = 200


@dataclass
class ItemResult:
    index: int
    output_text: str
    score: float
    grader_scores: dict[str, float]
    passed: dict[str, bool | None]
    # "<rule>: <why>" (sampling_failed, template_field_missing, judge_no_score, ...): the first
    # grader's or the sampler's failure; the item then scores what its graders could give.
    error: str | None
    seconds: float
    attempt: int  # the attempt of the job that produced it (kept across resumes)


@dataclass
class EvalProgress:
    done: int
    total: int
    running_score: float
    eta_seconds: float
    errors: int


_FIELDS = {f.name for f in fields(ItemResult)}


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text[:_REASON_CHARS]


def load_results(results_path: Path, total: int) -> list[ItemResult]:
    """The results already in the file (first per index); a torn last line is dropped and the
    file rewritten without it, so the next append starts on a clean line."""
    if not results_path.exists():
        return []
    raw = results_path.read_bytes()
    lines = raw.split(b"\n")
    kept: list[ItemResult] = []
    seen: set[int] = set()
    clean = raw.endswith(b"\n") or not raw
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or set(obj) != _FIELDS:
                raise ValueError("not an item result")
            result = ItemResult(**obj)
        except (ValueError, TypeError) as exc:
            if n >= len(lines) - 2:  # the last line (split leaves "" after a final newline)
                clean = False
                break
            raise ValueError(f"{results_path.name} line {n + 1} is not a result: {exc}") from None
        if 0 <= result.index < total and result.index not in seen:
            seen.add(result.index)
            kept.append(result)
    if not clean:
        text = "".join(json.dumps(asdict(r)) + "\n" for r in kept)
        tmp = results_path.with_suffix(results_path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, results_path)
    return kept


def _append(handle: Any, result: ItemResult) -> None:
    handle.write(json.dumps(asdict(result)) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


async def _grade_all(
    graders: list[Grader], item: dict[str, Any], sample: Sample
) -> list[GradeResult]:
    async def one(grader: Grader) -> GradeResult:
        try:
            return await grader.grade(item, sample)
        except Exception as exc:  # noqa: BLE001 - a grader bug costs that item, not the run
            return GradeResult(0.0, error=GRADER_FAILED, detail=f"{grader.name}: {_short(exc)}")

    return list(await asyncio.gather(*(one(g) for g in graders)))


async def evaluate_item(
    index: int,
    item: dict[str, Any],
    sampler: Sampler,
    graders: list[Grader],
    sampling: SamplingConfig,
    attempt: int,
) -> ItemResult:
    """One item's answer and grades; never raises for the item's own failures."""
    started = time.monotonic()
    names = [g.name for g in graders]
    try:
        output = await sampler.sample(item_messages(item), sampling)
    except Exception as exc:  # noqa: BLE001 - openai already retried 429/503; the run goes on
        return ItemResult(
            index,
            "",
            0.0,
            dict.fromkeys(names, 0.0),
            dict.fromkeys(names),
            f"{SAMPLING_FAILED}: {_short(exc)}",
            time.monotonic() - started,
            attempt,
        )
    grades = await _grade_all(graders, item, Sample(output))
    failed = next((g for g in grades if g.error), None)
    error = None
    if failed is not None:
        error = f"{failed.error}: {failed.detail}" if failed.detail else failed.error
    score = sum(g.score for g in grades) / len(grades) if grades else 0.0
    return ItemResult(
        index=index,
        output_text=output,
        score=score,
        grader_scores={n: g.score for n, g in zip(names, grades, strict=True)},
        passed={n: g.passed for n, g in zip(names, grades, strict=True)},
        error=error,
        seconds=time.monotonic() - started,
        attempt=attempt,
    )


async def run_eval(
    items: list[dict[str, Any]],
    sampler: Sampler,
    graders: list[Grader],
    sampling: SamplingConfig,
    results_path: Path,
    *,
    concurrency: int,
    attempt: int,
    on_progress: Callable[[EvalProgress], None],
) -> list[ItemResult]:
    """Results for every item, sorted by index; at most ``concurrency`` items in flight.
    ``on_progress`` is called once per item finished in this attempt; its ETA is from this
    attempt's pace (resumed items cost nothing now)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    total = len(items)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results = {r.index: r for r in load_results(results_path, total)}
    pending = [i for i in range(total) if i not in results]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in pending:
        queue.put_nowait(index)
    started = time.monotonic()
    state = {
        "new": 0,
        "score": sum(r.score for r in results.values()),
        "errors": sum(1 for r in results.values() if r.error),
    }

    with results_path.open("a", encoding="utf-8") as handle:

        def finished(result: ItemResult) -> None:
            _append(handle, result)
            results[result.index] = result
            state["new"] += 1
            state["score"] += result.score
            state["errors"] += result.error is not None
            done, new = len(results), state["new"]
            pace = (time.monotonic() - started) / new
            on_progress(
                EvalProgress(
                    done=done,
                    total=total,
                    running_score=state["score"] / done,
                    eta_seconds=pace * (total - done),
                    errors=int(state["errors"]),
                )
            )

        async def worker() -> None:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                finished(
                    await evaluate_item(index, items[index], sampler, graders, sampling, attempt)
                )

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(pending)))))
    return [results[i] for i in sorted(results)]
