"""The wire contracts lint clean with buf (STANDARD) and the generated stubs are current."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"


def test_buf_lint_passes():
    assert BUF.exists(), "buf is missing: run `make setup`"
    result = subprocess.run([str(BUF), "lint"], cwd=REPO / "proto", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_are_generated_from_the_current_protos():
    from services.common.stubs import registry_pb2, trainer_pb2

    for module, proto in [
        (registry_pb2, "proto/tuneplex/registry/v1/registry.proto"),
        (trainer_pb2, "proto/tuneplex/trainer/v1/trainer.proto"),
    ]:
        names = {
            line.split()[1]
            for line in (REPO / proto).read_text().splitlines()
            if line.startswith(("message ", "enum "))
        }
        missing = {n for n in names if not hasattr(module, n)}
        assert not missing, f"stale stubs, run `make protos`: {missing}"


def test_zero_values_are_unspecified():
    from services.common.stubs import registry_pb2, trainer_pb2

    for module in (registry_pb2, trainer_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values[0].number == 0
            assert enum.values[0].name.endswith("_UNSPECIFIED"), enum.name
