"""The CLI's view of one registry version shows its labels and a preference set's format."""

from __future__ import annotations

from rich.console import Console

from services.client.cli.registry_views import version_table
from services.common.stubs import registry_pb2


def rendered(version: registry_pb2.ArtifactVersion) -> str:
    console = Console(record=True, width=200)
    console.print(version_table(version))
    return console.export_text()


def test_version_view_shows_labels_and_the_preference_format():
    version = registry_pb2.ArtifactVersion(
        kind=registry_pb2.ARTIFACT_KIND_DATASET,
        name="file-0123456789abcdef01234567",
        version=1,
        dataset=registry_pb2.DatasetInfo(
            format=registry_pb2.DATASET_FORMAT_PREFERENCE, num_examples=12
        ),
        labels={"tuneplex.owner": "team-a", "openai.filename": "prefs.jsonl"},
    )
    text = rendered(version)
    assert "12 examples, preference pairs (DPO)" in text
    assert "openai.filename=prefs.jsonl, tuneplex.owner=team-a" in text


def test_a_version_without_labels_has_no_labels_row():
    version = registry_pb2.ArtifactVersion(name="plain", version=2)
    assert "labels" not in rendered(version)
