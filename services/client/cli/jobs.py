"""`tuneplex jobs ...`: fine-tuning jobs on the trainer."""

from __future__ import annotations

import time

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from services.client.cli.console import err, fail_with, out
from services.client.config import ClientSettings
from services.client.trainer import FINAL_STATES, TrainerClient, state_name
from services.common.errors import TuneplexError
from services.common.stubs import trainer_pb2

app = typer.Typer(help="Create, follow and cancel fine-tuning jobs.", no_args_is_help=True)

METHODS = {
    "lora": trainer_pb2.METHOD_LORA,
    "qlora": trainer_pb2.METHOD_QLORA,
    "dora": trainer_pb2.METHOD_DORA,
    "full": trainer_pb2.METHOD_FULL,
    "continued_pretraining": trainer_pb2.METHOD_CONTINUED_PRETRAINING,
}
PRECISIONS = {
    "fp32": trainer_pb2.PRECISION_FP32,
    "bf16": trainer_pb2.PRECISION_BF16,
    "fp16": trainer_pb2.PRECISION_FP16,
}


def _client() -> TrainerClient:
    s = ClientSettings()
    return TrainerClient(s.trainer_target, api_key=s.api_key)


@app.command()
def create(
    dataset: str = typer.Option(..., help="Dataset in the registry, e.g. `shop-sql@1`."),
    output: str = typer.Option(..., "--output", "-o", help="Adapter name to publish to."),
    base_model: str = typer.Option("smollm2-135m-instruct", help="Base model in the registry."),
    validation_dataset: str = typer.Option("", help="Validation dataset in the registry."),
    method: str = typer.Option("lora", help=f"One of {', '.join(METHODS)}."),
    rank: int = typer.Option(0, "--rank", "-r", help="LoRA rank (default 16)."),
    alpha: float = typer.Option(0, help="LoRA alpha (default 2 x rank)."),
    epochs: float = typer.Option(0, help="Epochs (default 3)."),
    max_steps: int = typer.Option(0, help="Stop after this many steps (overrides epochs)."),
    learning_rate: float = typer.Option(0, "--lr", help="Learning rate (default 2e-4)."),
    batch_size: int = typer.Option(0, help="Per-device batch size (default 8)."),
    max_seq_length: int = typer.Option(0, help="Tokens per example (default 1024)."),
    packing: bool = typer.Option(False, help="Pack short examples into full sequences."),
    precision: str = typer.Option("", help="fp32, bf16 or fp16 (default by device)."),
    save_steps: int = typer.Option(0, help="Checkpoint every N steps (default 50)."),
    eval_steps: int = typer.Option(0, help="Evaluate every N steps."),
    train_on_prompt: bool = typer.Option(False, help="Also compute the loss on prompt tokens."),
    idempotency_key: str = typer.Option("", help="Same key again returns the same job."),
    watch_: bool = typer.Option(False, "--watch", help="Follow the job until it ends."),
) -> None:
    """Queue a fine-tuning job; prints its id."""
    if method not in METHODS:
        err.print(f"[bold red]error:[/] unknown method {method!r}; use one of {', '.join(METHODS)}")
        raise typer.Exit(2)
    if precision and precision not in PRECISIONS:
        err.print("[bold red]error:[/] precision must be fp32, bf16 or fp16")
        raise typer.Exit(2)
    spec = trainer_pb2.TrainingSpec(
        base_model=base_model,
        dataset=dataset,
        validation_dataset=validation_dataset,
        method=METHODS[method],
        output_name=output,
        lora=trainer_pb2.LoraConfig(r=rank, alpha=alpha),
        hyperparameters=trainer_pb2.Hyperparameters(
            epochs=epochs,
            max_steps=max_steps,
            learning_rate=learning_rate,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            packing=packing,
            precision=PRECISIONS.get(precision, 0),
            save_steps=save_steps,
            eval_steps=eval_steps,
            train_on_prompt=train_on_prompt,
        ),
    )
    try:
        with _client() as client:
            job = client.create_job(spec, idempotency_key=idempotency_key)
            out.print(job.id, highlight=False)
            err.print(
                f"queued; estimated peak memory {job.estimated_peak_memory_bytes / 2**30:.2f} GiB"
            )
            if watch_:
                _report_final(watch_job(client, job.id))
    except TuneplexError as exc:
        fail_with(exc)


@app.command("list")
def list_(state: str = typer.Option("", help="Only jobs in this state, e.g. running.")) -> None:
    """List jobs, newest first."""
    wanted = getattr(trainer_pb2, f"JOB_STATE_{state.upper()}", None) if state else 0
    if wanted is None:
        err.print(f"[bold red]error:[/] unknown state {state!r}")
        raise typer.Exit(2)
    try:
        with _client() as client:
            jobs = client.list_jobs(wanted)
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


def watch_job(client: TrainerClient, job_id: str) -> trainer_pb2.Job:
    """Show a job's events live (progress bar with loss, tokens/s and ETA) until it ends;
    return the job in its final state."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} tok/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(job_id, total=None, loss="-", speed="-")
        for event in client.stream_events(job_id):
            kind = event.WhichOneof("kind")
            if kind == "progress":
                p = event.progress
                bar.update(
                    task,
                    total=p.total_steps,
                    completed=p.step,
                    loss=f"{p.loss:.4f}",
                    speed=f"{p.tokens_per_second:.0f}",
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
