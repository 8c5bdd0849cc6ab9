"""The worker's "publish once" step: a retry finds the version its job published instead of
doing the work and publishing again; an export's output name must otherwise be unused."""

from __future__ import annotations

import pytest

from services.common.errors import AlreadyExists, NotFound
from services.common.stubs import registry_pb2
from services.trainer.worker.export import name_taken
from services.trainer.worker.publish import Publication, own_version, publish_once


class VersionsOf:
    """A registry that answers ``versions`` and ``push``: what publishing asks."""

    def __init__(self, *job_ids: str):
        self.found = [
            registry_pb2.ArtifactVersion(
                name="m",
                version=i + 1,
                lineage=registry_pb2.Lineage(job_id=j, metrics={"train_loss": 1.5}),
            )
            for i, j in enumerate(job_ids)
        ]
        self.pushed: list[dict] = []

    def versions(self, kind: str, name: str):
        if not self.found:
            raise NotFound(f"no {kind} named {name!r}")
        return self.found

    def push(self, kind, name, path, **fields):
        self.pushed.append({"kind": kind, "name": name, "path": path, **fields})
        version = registry_pb2.ArtifactVersion(
            name=name, version=len(self.found) + 1, lineage=fields["lineage"]
        )
        self.found.append(version)
        return version


def test_a_retry_finds_the_version_its_job_published_instead_of_publishing_again():
    assert own_version(VersionsOf(), "model", "m", "job-1", name_taken=name_taken("m")) is None
    assert own_version(VersionsOf("job-1"), "model", "m", "job-1").version == 1
    # Without name_taken another job's versions are just earlier versions (training jobs).
    assert own_version(VersionsOf("job-other"), "adapter", "m", "job-1") is None
    with pytest.raises(AlreadyExists) as raised:
        own_version(VersionsOf("job-other"), "model", "m", "job-1", name_taken=name_taken("m"))
    assert raised.value.code == "name_taken" and raised.value.param == "export.output_name"


def _publication(tmp_path) -> Publication:
    return Publication(
        folder=tmp_path,
        description="d",
        source="trainer job job-1",
        lineage={"job_id": "job-1", "base_model": "base@1"},
        metrics={"train_loss": 0.5},
        hyperparameters={"lora_r": 8, "method": "lora"},
        base_model="base@1",
    )


def test_publish_once_pushes_what_the_work_made_with_its_lineage(tmp_path, capsys):
    registry = VersionsOf("job-0")
    ref = publish_once(registry, "adapter", "m", "job-1", lambda: _publication(tmp_path))
    assert ref == "m@2"
    [push] = registry.pushed
    assert push["kind"] == "adapter" and push["path"] == tmp_path
    assert push["base_model"] == "base@1"
    assert push["lineage"].job_id == "job-1" and push["lineage"].base_model == "base@1"
    assert dict(push["lineage"].metrics) == {"train_loss": 0.5}
    assert push["lineage"].hyperparameters["lora_r"] == 8
    assert '"type": "published", "output": "m@2"' in capsys.readouterr().out


def test_publish_once_skips_the_work_when_the_job_already_published(tmp_path, capsys):
    registry = VersionsOf("job-0", "job-1")

    def work():
        raise AssertionError("the work ran again")

    assert publish_once(registry, "adapter", "m", "job-1", work) == "m@2"
    assert registry.pushed == []
    out = capsys.readouterr().out
    assert "an earlier attempt published m@2" in out
    assert '"metrics": {"train_loss": 1.5}' in out


def test_publish_once_checks_the_name_before_the_work(tmp_path):
    registry = VersionsOf("job-other")
    ran = []
    with pytest.raises(AlreadyExists):
        publish_once(
            registry, "model", "m", "job-1", lambda: ran.append(1), name_taken=name_taken("m")
        )
    assert ran == [] and registry.pushed == []


def test_a_rank_that_does_not_publish_pushes_nothing():
    registry = VersionsOf()
    assert publish_once(registry, "adapter", "m", "job-1", lambda: None) is None
    assert registry.pushed == []
