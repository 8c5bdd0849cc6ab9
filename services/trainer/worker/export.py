"""Export work: registry -> export recipe -> registry.

Pulls the pinned adapter and the exact base model version it was trained on, merges them with
``recipes/export.py`` and publishes a MODEL version whose lineage names both (the registry sets
``ModelInfo.merged_from_adapter`` from ``lineage.adapter``). The output name must be new, so an
existing model of that name that another job published is an error, not a next version.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from services.client.registry import RegistryClient
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.trainer.artifacts import RegistryPullCache, version_ref
from services.trainer.worker.protocol import WorkerConfig, emit
from services.trainer.worker.publish import Publication, publish_once


def name_taken(name: str) -> AlreadyExists:
    return AlreadyExists(
        f"model name {name!r} was taken while the export waited; export again with another --name",
        param="export.output_name",
        code="name_taken",
    )


def run(config: WorkerConfig, job_dir: Path, client: RegistryClient) -> str:
    """Merge and publish; returns the published ``name@version``."""
    from services.trainer.recipes import export as recipe

    e = config.export
    assert e is not None
    emit("state", state="VALIDATING", message=f"fetching {e.adapter} and {e.base_model}")

    def merge() -> Publication:
        cache = RegistryPullCache(client, config.cache_dir)
        adapter, adapter_dir = cache.fetch("adapter", e.adapter, "export.adapter")
        try:
            base, model_dir = cache.fetch("model", e.base_model, "export.adapter")
        except NotFound:
            raise FailedPrecondition(
                f"base model {e.base_model} of {e.adapter} was deleted from the registry; push "
                "it again, then export",
                param="export.adapter",
                code="base_model_not_found",
            ) from None
        lineage = {
            "job_id": config.job_id,
            "adapter": version_ref(adapter),
            "base_model": version_ref(base),
        }
        output = job_dir / "output"
        shutil.rmtree(output, ignore_errors=True)  # what a killed attempt left half-written
        report = recipe.run(
            recipe.ExportRecipeConfig(
                export=e, adapter_dir=adapter_dir, model_dir=model_dir, report=lineage
            ),
            output,
        )
        emit("log", message=f"publishing {e.output_name} ({e.precision})")
        return Publication(
            folder=output,
            description=f"{version_ref(adapter)} merged into {version_ref(base)} ({e.precision})",
            source=f"tuneplex export of {version_ref(adapter)} (trainer job {config.job_id})",
            lineage=lineage,
            metrics={k: float(v) for k, v in report["metrics"].items()},
            labels=config.labels,
        )

    ref = publish_once(
        client, "model", e.output_name, config.job_id, merge, name_taken=name_taken(e.output_name)
    )
    assert ref is not None  # an export runs as one process, which publishes
    return ref
