"""`tuneplex export ADAPTER --name NAME`: merge an adapter into its base model as a new model,
for runtimes that cannot load LoRA (Ollama, vLLM for DoRA adapters, ...)."""

from __future__ import annotations

import typer

from services.client.cli.console import err, fail, fail_with, out
from services.client.cli.jobs import _client, _report_final, watch_job
from services.common.errors import TuneplexError
from services.common.training_spec import PRECISIONS as PRECISION_NAMES

PRECISIONS = {name: number for number, name in PRECISION_NAMES.items()}


def export(
    adapter: str = typer.Argument(..., help="Adapter in the registry: `name`, `name@3`, ..."),
    name: str = typer.Option(..., "--name", "-n", help="Model name to publish (must be new)."),
    dtype: str = typer.Option("bf16", help="Weights dtype of the merged model: bf16, fp16, fp32."),
    ollama: bool = typer.Option(False, "--ollama", help="Also write an Ollama Modelfile."),
    idempotency_key: str = typer.Option("", help="Same key again returns the same job."),
    watch_: bool = typer.Option(False, "--watch", help="Follow the job until it ends."),
) -> None:
    """Merge an adapter into its base model and publish a plain model; prints the job id.

    Serve the result as a base model (TUNEPLEX_GATEWAY_BASE_MODELS) or fetch it for another
    runtime with `tuneplex models pull NAME DEST`."""
    if dtype not in PRECISIONS:
        fail(f"--dtype must be one of {', '.join(PRECISIONS)}", 2)
    try:
        with _client() as client:
            job = client.create_export(
                adapter,
                name,
                precision=PRECISIONS[dtype],
                ollama_modelfile=ollama,
                idempotency_key=idempotency_key,
            )
            out.print(job.id, highlight=False)
            err.print(
                f"queued export of {job.spec.export.adapter} -> {name}; estimated peak memory "
                f"{job.estimated_peak_memory_bytes / 2**30:.2f} GiB",
                highlight=False,
            )
            if watch_:
                _report_final(watch_job(client, job.id))
    except TuneplexError as exc:
        fail_with(exc)
