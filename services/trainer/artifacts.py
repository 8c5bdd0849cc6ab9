"""Registry artifacts on local disk for the trainer: base models and datasets, in the shared
verified cache (`services/client/artifact_cache.py`: keyed by manifest sha256, every file
checked before each use) that the service and its workers, separate processes, share through
one folder. The service itself reads only a model's config.json, alone (``model_config``): a
memory estimate needs the model's shape, not its weights."""

from __future__ import annotations

import json
from pathlib import Path

from services.client.artifact_cache import ArtifactCache
from services.common.errors import FailedPrecondition, NotFound, shown
from services.common.refs import parse_ref

MODEL_CONFIG = "config.json"


def version_ref(artifact) -> str:
    return f"{artifact.name}@{artifact.version}"


class RegistryPullCache:
    """Registry versions as verified local folders, pulled once per manifest."""

    def __init__(self, client, cache_dir: Path):
        self.client = client
        self.cache_dir = cache_dir
        self.store = ArtifactCache(cache_dir)
        self.store.sweep_staging()

    def resolve(self, kind: str, ref: str, param: str):
        """The version ``ref`` names, or InvalidArgument / NotFound naming the spec field."""
        # Parsed here, not only by the registry, so a malformed ref names the job's field.
        parse_ref(ref, param=param)
        try:
            return self.client.resolve(kind, ref)
        except NotFound as exc:
            raise NotFound(
                f"{kind} {shown(ref)} is not in the registry ({exc.message}); push it first "
                f"(`tuneplex {kind}s push`) or fix {param.rsplit('.', 1)[-1]}",
                param=param,
                code=f"{kind}_not_found",
            ) from None

    def fetch(self, kind: str, ref: str, param: str) -> tuple[object, Path]:
        """(version, local folder) of ``ref``: the cached copy if every file still matches its
        sha256, else pulled (again)."""
        artifact = self.resolve(kind, ref, param)
        exact = version_ref(artifact)
        entry = self.store.get_or_fetch(
            artifact.manifest.sha256, exact, lambda staged: self.client.pull(kind, exact, staged)
        )
        return artifact, entry.path

    def model_config(self, model) -> dict:
        """The config.json of a resolved model version, read alone from the registry (verified
        against its manifest) rather than pulling the weights."""
        ref = version_ref(model)
        if not any(f.path == MODEL_CONFIG for f in model.manifest.files):
            raise _no_config(ref)
        return _parse_config(self.client.read_file("model", ref, MODEL_CONFIG), ref)


def dataset_file(folder: Path, ref: str, param: str) -> Path:
    """The one ``.jsonl`` file of a pulled dataset version."""
    files = sorted(p for p in folder.rglob("*.jsonl") if p.is_file())
    if len(files) != 1:
        raise FailedPrecondition(
            f"dataset {ref!r} should hold one .jsonl file, found {len(files)}; push a single "
            "JSONL file as the dataset",
            param=param,
            code="dataset_invalid",
        )
    return files[0]


def _no_config(ref: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"model {ref!r} has no config.json; import it with `tuneplex models import`",
        param="training.base_model",
        code="model_invalid",
    )


def _parse_config(data: bytes, ref: str) -> dict:
    try:
        config = json.loads(data)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise FailedPrecondition(
            f"model {ref!r} has a config.json that is not a JSON object; import it again with "
            "`tuneplex models import`",
            param="training.base_model",
            code="model_invalid",
        )
    return config
