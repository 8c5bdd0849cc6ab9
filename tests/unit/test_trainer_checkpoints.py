"""Atomic checkpoints: only renamed-and-marked folders count; leftovers of a killed worker are
ignored and cleared."""

from __future__ import annotations

from types import SimpleNamespace

from services.trainer.checkpoints import (
    MARKER,
    checkpoint_at,
    checkpoint_path,
    clear_staging,
    commit_checkpoint,
    complete_checkpoints,
    latest_checkpoint,
)


def staged(staging, step: int, payload: bytes = b"weights"):
    folder = staging / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(payload)
    return folder


def test_commit_renames_then_marks(tmp_path):
    staging, final = tmp_path / "_staging", tmp_path / "checkpoints"
    path = commit_checkpoint(staged(staging, 10), final)
    assert path == final / "checkpoint-10"
    assert (path / MARKER).is_file() and not (staging / "checkpoint-10").exists()
    (info,) = complete_checkpoints(final)
    assert info.step == 10 and info.size_bytes > len(b"weights")


def test_unmarked_and_foreign_folders_are_not_checkpoints(tmp_path):
    final = tmp_path / "checkpoints"
    commit_checkpoint(staged(tmp_path / "s", 10), final)
    commit_checkpoint(staged(tmp_path / "s", 2), final)
    (final / "checkpoint-30").mkdir()  # renamed, killed before the marker
    (final / "checkpoint-30" / "adapter_model.safetensors").write_bytes(b"x")
    (final / "notes").mkdir()
    assert [c.step for c in complete_checkpoints(final)] == [2, 10]  # numeric, not lexical
    assert latest_checkpoint(final).step == 10
    assert latest_checkpoint(tmp_path / "missing") is None


def test_recommitting_a_step_replaces_an_unmarked_leftover(tmp_path):
    final = tmp_path / "checkpoints"
    (final / "checkpoint-20").mkdir(parents=True)
    commit_checkpoint(staged(tmp_path / "s", 20, b"new"), final)
    assert (final / "checkpoint-20" / "adapter_model.safetensors").read_bytes() == b"new"
    assert latest_checkpoint(final).step == 20


def test_clear_staging_drops_half_written_checkpoints(tmp_path):
    staging = tmp_path / "_staging"
    staged(staging, 40)
    clear_staging(staging)
    assert staging.is_dir() and not any(staging.iterdir())


def test_checkpoint_at_finds_only_a_complete_one(tmp_path):
    final = tmp_path / "checkpoints"
    commit_checkpoint(staged(tmp_path / "s", 10), final)
    (final / "checkpoint-20").mkdir()  # renamed, killed before the marker
    assert checkpoint_at(final, 10).path == checkpoint_path(final, 10) == final / "checkpoint-10"
    assert checkpoint_at(final, 20) is None and checkpoint_at(final, 30) is None


def test_the_trainer_loads_the_best_checkpoint_from_where_it_was_committed(tmp_path):
    """transformers records the best checkpoint in the staging folder it wrote it to; once
    committed (and after a resume, whose state names the staging path that is gone) it must
    point at the committed copy, or ``load_best_model_at_end`` silently keeps the last
    weights."""
    from services.trainer.recipes.common import EventCallback

    staging, final = tmp_path / "_staging", tmp_path / "checkpoints"
    events = EventCallback(staging, final)
    args = SimpleNamespace(should_save=True, load_best_model_at_end=True)
    state = SimpleNamespace(
        global_step=4, best_global_step=4, best_model_checkpoint=str(staged(staging, 4))
    )
    events.on_save(args, state, None)
    assert state.best_model_checkpoint == str(final / "checkpoint-4")
    assert (final / "checkpoint-4" / "adapter_model.safetensors").is_file()

    resumed = SimpleNamespace(
        global_step=6, best_global_step=4, best_model_checkpoint=None, num_input_tokens_seen=0
    )
    events.on_train_begin(args, resumed, None)
    assert resumed.best_model_checkpoint == str(final / "checkpoint-4")


def test_a_stop_asked_after_the_last_step_still_stops_the_worker(tmp_path, capsys):
    """SIGTERM during the last step's save or the final evaluation finds no step end left to
    stop at: it must still reach the handler that was there before training (the default one
    ends the worker), not be swallowed so that a cancelled job goes on to publish."""
    import signal

    from services.trainer.recipes.common import EventCallback

    delivered = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: delivered.append(signum))
    try:
        events = EventCallback(tmp_path / "_staging", tmp_path / "checkpoints")
        args = SimpleNamespace(load_best_model_at_end=False)
        state = SimpleNamespace(global_step=9, best_global_step=0, num_input_tokens_seen=0)
        events.on_train_begin(args, state, None)
        signal.raise_signal(signal.SIGTERM)  # after the last on_step_end
        assert events.stop_asked and not delivered
        events.on_train_end(args, state, None)
        assert delivered == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
