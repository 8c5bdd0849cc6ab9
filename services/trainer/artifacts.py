"""Registry artifacts on local disk: base models and datasets pulled once per version into a
cache shared by the service (which reads a model's config for the memory estimate) and its
workers. A pull lands in a temporary folder renamed into place, so a killed pull is never
mistaken for a complete one."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from services.common.errors import FailedPrecondition, NotFound, shown
from services.common.refs import parse_ref


def version_ref(artifact) -> str:
    return f"{artifact.name}@{artifact.version}"


class RegistryPullCache:
    """Registry versions pulled to local folders, once per version."""

    def __init__(self, client, cache_dir: Path):
        self.client = client
        self.cache_dir = cache_dir

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
        """(version, local folder) of ``ref``, pulling it unless already cached."""
        artifact = self.resolve(kind, ref, param)
        final = self.cache_dir / kind / version_ref(artifact)
        if final.is_dir():
            return artifact, final
        tmp = self.cache_dir / kind / f".pull-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            self.client.pull(kind, version_ref(artifact), tmp)
            try:
                tmp.rename(final)
            except OSError:  # another process finished the same pull first
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return artifact, final


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


def model_config(folder: Path, ref: str) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FailedPrecondition(
            f"model {ref!r} has no config.json; import it with `tuneplex models import`",
            param="training.base_model",
            code="model_invalid",
        )
    return json.loads(path.read_text())
