"""ruff and mypy pass on the whole tree, so `make test` keeps the code as clean as `make lint`."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    # The config (files, plugins, strict modules) is [tool.mypy] in pyproject.toml.
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args], cwd=REPO, capture_output=True, text=True
    )


def test_ruff_check_passes():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes():
    result = _mypy()
    assert result.returncode == 0, result.stdout + result.stderr


# A module that uses the Protocols the way the services do: the real implementations must be
# accepted, and an object that lacks a member, or has one with another signature, refused.
PROBE = '''
from __future__ import annotations

from pathlib import Path

from services.client.registry import AsyncRegistryClient
from services.common.stubs import registry_pb2
from services.gateway.registry_reader import RegistryReader
from services.trainer.runners.base import Runner, WorkerHandle
from services.trainer.runners.local import LocalRunner


class NoPull:
    async def resolve(self, kind: str, ref: str) -> registry_pb2.ArtifactVersion:
        return registry_pb2.ArtifactVersion()

    async def list(self, kind: str | None = None) -> list[registry_pb2.Artifact]:
        return []


class PullToText(NoPull):
    async def pull(self, kind: str, ref: str, dest: str) -> registry_pb2.ArtifactVersion:
        return registry_pb2.ArtifactVersion()


class NoStop:
    async def wait(self) -> int:
        return 0


class StartWithoutAttempt:
    async def start(
        self, job_id: str, job_dir: Path, num_gpus: int, zero_stage: int
    ) -> WorkerHandle:
        raise NotImplementedError


real_reader: RegistryReader = AsyncRegistryClient("localhost:1")
real_runner: Runner = LocalRunner({})
missing_member: RegistryReader = NoPull()
wrong_signature: RegistryReader = PullToText()
handle_without_stop: WorkerHandle = NoStop()
runner_without_attempt: Runner = StartWithoutAttempt()
'''


def test_mypy_holds_implementations_to_the_protocols(tmp_path):
    source = textwrap.dedent(PROBE).lstrip()
    probe = tmp_path / "protocol_probe.py"
    probe.write_text(source)
    result = _mypy(str(probe))

    def line_of(name: str) -> int:
        return next(n for n, line in enumerate(source.splitlines(), 1) if line.startswith(name))

    # Only the probe's own lines: errors elsewhere in the tree are test_mypy_passes's. By file
    # name, not path: mypy's cache may replay an unchanged module under the path it had before.
    flagged = {
        int(line.split(":")[1])
        for line in result.stdout.splitlines()
        if line.split(":")[0].endswith(f"/{probe.name}") and ": error:" in line
    }
    refused = ("missing_member", "wrong_signature", "handle_without_stop", "runner_without_")
    assert flagged == {line_of(name) for name in refused}, result.stdout
    assert '"NoPull" is missing following "RegistryReader" protocol member' in result.stdout
    assert "def pull(self, kind: str, ref: str, dest: str)" in result.stdout
