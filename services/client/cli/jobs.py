"""`tuneplex jobs ...`: fine-tuning jobs on the trainer."""

from __future__ import annotations

import time

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from services.client.cli.console import err, fail_with, out
from services.client.cli.spec_options import with_spec_options
from services.client.config import ClientSettings
from services.client.trainer import FINAL_STATES, TrainerClient, state_name
from services.common.errors import TuneplexError
from services.common.stubs import trainer_pb2
from services.common.training_spec_proto import spec_from_values

app = typer.Typer(
    help="Create, follow, pause, resume and cancel fine-tuning jobs.", no_args_is_help=True
)

LABEL_HELP = "A label KEY=VALUE (repeat the flag for more)."
# The states a paused job passes through until its worker has committed a checkpoint.
STOPPING = (trainer_pb2.JOB_STATE_VALIDATING, trainer_pb2.JOB_STATE_RUNNING)
PAUSE_WAIT_SECONDS = 600.0  # the trainer's grace for a pausing worker (after it, it is killed)


def _client() -> TrainerClient:
    s = ClientSettings()
    return TrainerClient(s.trainer_target, api_key=s.api_key)


@app.command()
@with_spec_options
def create(
    settings: dict,
    idempotency_key: str = typer.Option("", help="Same key again returns the same job."),
    watch_: bool = typer.Option(False, "--watch", help="Follow the job until it ends."),
    label: list[str] = typer.Option([], "--label", help=LABEL_HELP),
) -> None:
    """Queue a fine-tuning job; prints its id."""
    labels = _labels(label)
    try:
        spec = spec_from_values(settings)
        with _client() as client:
            job = client.create_job(spec, idempotency_key=idempotency_key, labels=labels)
            out.print(job.id, highlight=False)
            err.print(
                f"queued; estimated peak memory {job.estimated_peak_memory_bytes / 2**30:.2f} GiB"
            )
            if watch_:
                _report_final(watch_job(client, job.id))
    except TuneplexError as exc:
        fail_with(exc)


def _labels(pairs: list[str]) -> dict[str, str]:
    """``--label k=v`` flags as a dict (the trainer checks the keys and values)."""
    labels = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            err.print(f"[bold red]error:[/] --label wants KEY=VALUE, got {pair!r}")
            raise typer.Exit(2)
        labels[key] = value
    return labels


@app.command("list")
def list_(
    state: str = typer.Option("", help="Only jobs in this state, e.g. running."),
    label: list[str] = typer.Option([], "--label", help="Only jobs with this KEY=VALUE label."),
) -> None:
    """List jobs, newest first."""
    wanted = getattr(trainer_pb2, f"JOB_STATE_{state.upper()}", None) if state else 0
    if wanted is None:
        err.print(f"[bold red]error:[/] unknown state {state!r}")
        raise typer.Exit(2)
    labels = _labels(label)
    try:
        with _client() as client:
            jobs = client.list_jobs(wanted, labels=labels)
    except TuneplexError as exc:
        fail_with(exc)
    table = Table()
    # Ids are what users copy into other commands: never cut them.
    table.add_column("id", no_wrap=True, min_width=16)
    for column in ("state", "output", "step", "loss", "created"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            job.id,
            state_name(job.state),
            job.output or getattr(job.spec, job.spec.WhichOneof("kind") or "training").output_name,
            f"{job.progress.step}/{job.progress.total_steps}",
            f"{job.progress.loss:.4f}",
            job.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


@app.command()
def show(job_id: str) -> None:
    """Show one job as JSON."""
    from google.protobuf.json_format import MessageToJson

    try:
        with _client() as client:
            job = client.get_job(job_id)
    except TuneplexError as exc:
        fail_with(exc)
    out.print_json(MessageToJson(job))


@app.command()
def cancel(job_id: str) -> None:
    """Stop a job (checkpoints are kept)."""
    try:
        with _client() as client:
            client.cancel_job(job_id)
            for _ in range(60):
                job = client.get_job(job_id)
                if job.state in FINAL_STATES:
                    break
                time.sleep(0.5)
    except TuneplexError as exc:
        fail_with(exc)
    out.print(f"{job_id}: {state_name(job.state)}")


@app.command()
def pause(job_id: str) -> None:
    """Stop a job at a checkpoint; `jobs resume` continues it from there."""
    try:
        with _client() as client:
            job = client.pause_job(job_id)
            # A running job pauses once its worker has saved the step it is on.
            deadline = time.monotonic() + PAUSE_WAIT_SECONDS
            while job.state in STOPPING and time.monotonic() < deadline:
                time.sleep(0.5)
                job = client.get_job(job_id)
    except TuneplexError as exc:
        fail_with(exc)
    out.print(f"{job_id}: {state_name(job.state)}")


@app.command()
def resume(job_id: str) -> None:
    """Queue a paused job again; it continues from its newest checkpoint."""
    try:
        with _client() as client:
            job = client.resume_job(job_id)
    except TuneplexError as exc:
        fail_with(exc)
    out.print(f"{job_id}: {state_name(job.state)}")


@app.command()
def watch(job_id: str) -> None:
    """Follow a job live: a progress bar with loss and ETA, until it ends."""
    try:
        with _client() as client:
            _report_final(watch_job(client, job_id))
    except TuneplexError as exc:
        fail_with(exc)


def _report_final(job: trainer_pb2.Job) -> None:
    if job.state == trainer_pb2.JOB_STATE_SUCCEEDED:
        out.print(f"{job.id}: succeeded -> {job.output}", highlight=False)
    elif job.state == trainer_pb2.JOB_STATE_FAILED:
        err.print(f"[bold red]failed[/] ({job.error.code}): {job.error.message}", highlight=False)
        raise typer.Exit(1)
    else:
        out.print(f"{job.id}: {state_name(job.state)}")


class PipedProgress:
    """When a progress line is due for output that is not a terminal: about every 5% of the
    steps, at most every 30 s of silence, and the last step."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._last_step = 0
        self._last_at = time.monotonic()

    def due(self, step: int, total: int) -> bool:
        now = time.monotonic()
        stride = max(1, total // 20)
        if step >= total or step - self._last_step >= stride or now - self._last_at >= self.every_s:
            self._last_step, self._last_at = step, now
            return True
        return False


def watch_job(client: TrainerClient, job_id: str) -> trainer_pb2.Job:
    """Show a job's events live (progress bar with loss, tokens/s and ETA; for an eval job the
    items scored and the running score) until it ends; return the job in its final state."""
    # An eval job's steps are items and its measure the running score, not loss and tok/s.
    evaluation = client.get_job(job_id).spec.WhichOneof("kind") == "evaluation"
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} " + ("items" if evaluation else "steps")),
        TextColumn("{task.fields[measure]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    piped = PipedProgress()
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(job_id, total=None, measure="-")
        for event in client.stream_events(job_id):
            kind = event.WhichOneof("kind")
            if kind == "progress":
                p = event.progress
                measure = (
                    f"score {p.running_score:.3f}"
                    if evaluation
                    else f"loss {p.loss:.4f} {p.tokens_per_second:.0f} tok/s"
                )
                bar.update(task, total=p.total_steps, completed=p.step, measure=measure)
                if not err.is_terminal and piped.due(p.step, p.total_steps):
                    # A bar is drawn only on a terminal: a log gets a line now and then.
                    bar.console.print(
                        f"{'item' if evaluation else 'step'} {p.step}/{p.total_steps} {measure}",
                        highlight=False,
                    )
            elif kind == "state_changed":
                bar.console.print(
                    f"{state_name(event.state_changed.state)}: {event.state_changed.message}",
                    highlight=False,
                )
            elif kind == "eval":
                shown = ", ".join(
                    f"{k}={v:.4f}"
                    for k, v in sorted(event.eval.metrics.items())
                    if k in ("eval_loss", "eval_mean_token_accuracy")
                )
                bar.console.print(f"eval at step {event.eval.step}: {shown}", highlight=False)
            elif kind == "checkpoint_saved":
                bar.console.print(f"checkpoint at step {event.checkpoint_saved.step}")
            elif kind == "log":
                bar.console.print(event.log.message, highlight=False)
    return client.get_job(job_id)
