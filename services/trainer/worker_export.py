"""The export job in the worker: registry -> export recipe -> registry.

Pulls the pinned adapter and the exact base model version it was trained on, merges them with
``recipes/export.py`` and publishes a MODEL version whose lineage names both (the registry sets
``ModelInfo.merged_from_adapter`` from ``lineage.adapter``). The registry's upload is atomic,
so a worker killed mid-merge or mid-upload leaves no visible version and the next attempt
starts over. Publishing is idempotent per job: an attempt killed after the registry committed
but before it reported finds its own version (lineage.job_id) instead of publishing another.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.trainer.artifacts import ArtifactCache, published_by, version_ref, versions_of
from services.trainer.recipes.common import emit


def own_version(client, name: str, job_id: str):
    """The version of model ``name`` an earlier attempt of ``job_id`` published, if any;
    AlreadyExists when the name belongs to something else."""
    versions = versions_of(client, "model", name)
    if not versions:
        return None
    if (ours := published_by(versions, job_id)) is not None:
        return ours
    raise AlreadyExists(
        f"model name {name!r} was taken while the export waited; export again with another "
        "--name",
        param="export.output_name",
        code="name_taken",
    )


def run_export(config, job_dir: Path) -> str:
    """Merge and publish; returns the published ``name@version``."""
    from services.client.registry import RegistryClient
    from services.common.stubs import registry_pb2
    from services.trainer.recipes import export as recipe
    from services.trainer.worker import REGISTRY_KEY_ENV

    e = config.export
    emit("state", state="VALIDATING", message=f"fetching {e.adapter} and {e.base_model}")
    client = RegistryClient(config.registry_target, api_key=os.environ.get(REGISTRY_KEY_ENV))
    try:
        if (done := own_version(client, e.output_name, config.job_id)) is not None:
            ref = version_ref(done)
            emit("log", message=f"an earlier attempt published {ref}")
            emit("published", output=ref, metrics={})
            return ref
        cache = ArtifactCache(client, config.cache_dir)
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
        metrics = {k: float(v) for k, v in report["metrics"].items()}
        emit("log", message=f"publishing {e.output_name} ({e.precision})")
        published = client.push(
            "model",
            e.output_name,
            output,
            description=f"{version_ref(adapter)} merged into {version_ref(base)} ({e.precision})",
            lineage=registry_pb2.Lineage(**lineage, metrics=metrics),
            source=f"tuneplex export of {version_ref(adapter)} (trainer job {config.job_id})",
        )
        ref = version_ref(published)
        emit("published", output=ref, metrics=metrics)
        return ref
    finally:
        client.close()
