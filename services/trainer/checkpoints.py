"""Atomic checkpoints.

The HF Trainer writes ``checkpoint-<step>`` into a staging folder; once it has finished (its
``on_save`` hook), the folder is renamed into ``checkpoints/`` (same filesystem: one atomic
``rename``) and a marker file is written last. A worker killed at any moment leaves either a
staged folder (ignored, cleared on the next start), a renamed folder without marker (ignored) or
a complete checkpoint. Resume always starts from the newest complete one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

MARKER = "COMPLETE"
PREFIX = "checkpoint-"


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    size_bytes: int
    mtime: float


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_checkpoint(staged: Path, checkpoint_dir: Path) -> Path:
    """Move a fully written ``staged`` checkpoint into ``checkpoint_dir`` and mark it complete."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / staged.name
    if final.exists():  # a renamed-but-unmarked leftover of a killed attempt at the same step
        shutil.rmtree(final)
    os.rename(staged, final)
    _fsync_dir(checkpoint_dir)
    marker = final / MARKER
    with open(marker, "w") as f:
        f.write(staged.name)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(final)
    return final


def _step_of(path: Path) -> int | None:
    suffix = path.name[len(PREFIX) :]
    return int(suffix) if path.name.startswith(PREFIX) and suffix.isdigit() else None


def complete_checkpoints(checkpoint_dir: Path) -> list[CheckpointInfo]:
    """Complete checkpoints, oldest first; folders without the marker are not checkpoints."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        step = _step_of(path)
        if step is None or not (path / MARKER).is_file():
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        found.append(CheckpointInfo(step, path, size, (path / MARKER).stat().st_mtime))
    return sorted(found, key=lambda c: c.step)


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives once committed."""
    return checkpoint_dir / f"{PREFIX}{step}"


def checkpoint_at(checkpoint_dir: Path, step: int) -> CheckpointInfo | None:
    """The complete checkpoint of ``step``, if there is one."""
    return next((c for c in complete_checkpoints(checkpoint_dir) if c.step == step), None)


def latest_checkpoint(checkpoint_dir: Path) -> CheckpointInfo | None:
    done = complete_checkpoints(checkpoint_dir)
    return done[-1] if done else None


def clear_staging(staging_dir: Path) -> None:
    """Drop half-written checkpoints a killed attempt left behind."""
    shutil.rmtree(staging_dir, ignore_errors=True)
    staging_dir.mkdir(parents=True, exist_ok=True)
