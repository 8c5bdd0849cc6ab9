"""The wire contracts lint clean with buf (STANDARD) and the generated stubs are current: what
the stubs in ``services/common/_generated`` say about every message, field, enum and RPC is what
a fresh ``protoc`` compile of ``proto/`` says."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto"
BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"
FieldProto = descriptor_pb2.FieldDescriptorProto


def test_buf_lint_passes():
    assert BUF.exists(), "buf is missing: run `make setup`"
    result = subprocess.run([str(BUF), "lint"], cwd=PROTO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- what a file descriptor says, as comparable lines -------------------------------------


def _field(scope: str, message: descriptor_pb2.DescriptorProto, field: FieldProto) -> str:
    oneof = message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else "-"
    return (
        f"field {scope}.{field.name} = {field.number} {FieldProto.Label.Name(field.label)} "
        f"{FieldProto.Type.Name(field.type)} {field.type_name or '-'} "
        f"proto3_optional={field.proto3_optional} oneof={oneof}"
    )


def _enum(scope: str, enum: descriptor_pb2.EnumDescriptorProto) -> set[str]:
    name = f"{scope}.{enum.name}"
    return {f"enum {name}"} | {f"value {name}.{v.name} = {v.number}" for v in enum.value}


def _message(scope: str, message: descriptor_pb2.DescriptorProto) -> set[str]:
    name = f"{scope}.{message.name}"
    facts = {f"message {name} map_entry={message.options.map_entry}"}
    facts |= {_field(name, message, f) for f in message.field}
    facts |= {f"oneof {name}.{o.name}" for o in message.oneof_decl}
    facts |= {f"reserved {name} {r.start}-{r.end}" for r in message.reserved_range}
    facts |= {f"reserved {name} {n}" for n in message.reserved_name}
    for nested in message.nested_type:
        facts |= _message(name, nested)
    for enum in message.enum_type:
        facts |= _enum(name, enum)
    return facts


def contract(file: descriptor_pb2.FileDescriptorProto) -> set[str]:
    """Every fact of `file` a peer on the wire relies on, one line each."""
    scope = f".{file.package}"
    facts = {f"package {file.package}"} | {f"import {d}" for d in file.dependency}
    for message in file.message_type:
        facts |= _message(scope, message)
    for enum in file.enum_type:
        facts |= _enum(scope, enum)
    for service in file.service:
        facts.add(f"service {scope}.{service.name}")
        facts |= {
            f"rpc {scope}.{service.name}.{m.name}("
            f"{'stream ' if m.client_streaming else ''}{m.input_type}) returns ("
            f"{'stream ' if m.server_streaming else ''}{m.output_type})"
            for m in service.method
        }
    return facts


def compiled(proto_root: Path, tmp: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """A fresh compile of every .proto under `proto_root`, as scripts/gen_protos.sh runs it."""
    files = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    out = tmp / "descriptors.pb"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"--descriptor_set_out={out}",
            *files,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in descriptors.file}


def generated_module(proto_file: str, suffix: str = "_pb2") -> ModuleType:
    import services.common.stubs  # noqa: F401  (puts the generated folder on sys.path)

    return importlib.import_module(proto_file.removesuffix(".proto").replace("/", ".") + suffix)


def generated(proto_file: str) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(
        generated_module(proto_file).DESCRIPTOR.serialized_pb
    )


def stale(fresh: dict[str, descriptor_pb2.FileDescriptorProto]) -> list[str]:
    """What the generated stubs say differently from `fresh`: '-' only in the stubs, '+' only
    in the protos."""
    diff: list[str] = []
    for name, file in sorted(fresh.items()):
        try:
            stubs = contract(generated(name))
        except ImportError:
            diff.append(f"+ file {name} (no generated module)")
            continue
        protos = contract(file)
        diff += [f"- {fact}" for fact in sorted(stubs - protos)]
        diff += [f"+ {fact}" for fact in sorted(protos - stubs)]
    return diff


def test_stubs_say_what_the_protos_say(tmp_path):
    fresh = compiled(PROTO, tmp_path)
    assert fresh, "no .proto files found"
    diff = stale(fresh)
    assert not diff, "stale stubs, run `make protos`:\n" + "\n".join(diff)


def test_a_changed_field_number_is_a_stale_stub(tmp_path):
    """The check above can fail: a copy of proto/ with one field renumbered differs from the
    stubs in exactly that field."""
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy)
    proto = copy / "tuneplex" / "trainer" / "v1" / "trainer.proto"
    text, changed = re.subn(r"(optional int64 seed = )13;", r"\g<1>99;", proto.read_text(), count=1)
    assert changed == 1, "pick another field to renumber"
    proto.write_text(text)
    diff = stale(compiled(copy, tmp_path))
    assert len(diff) == 2, diff
    assert re.fullmatch(r"- field \.tuneplex\.trainer\.v1\.\w+\.seed = 13 .*", diff[0]), diff
    assert re.fullmatch(r"\+ field \.tuneplex\.trainer\.v1\.\w+\.seed = 99 .*", diff[1]), diff


def _registered_handlers(proto_file: str, service: str) -> dict:
    """The method handlers the generated ``add_<Service>Servicer_to_server`` registers."""
    grpc_module = generated_module(proto_file, "_pb2_grpc")

    class Recorder:
        handlers: dict = {}

        def add_generic_rpc_handlers(self, handlers):
            pass

        def add_registered_method_handlers(self, name, handlers):
            Recorder.handlers = {"service": name, **handlers}

    servicer = getattr(grpc_module, f"{service}Servicer")()
    getattr(grpc_module, f"add_{service}Servicer_to_server")(servicer, Recorder())
    return Recorder.handlers


@pytest.mark.parametrize(
    "proto_file", sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
)
def test_grpc_stubs_serve_every_rpc_with_its_types_and_streaming(tmp_path, proto_file):
    file = compiled(PROTO, tmp_path)[proto_file]
    for service in file.service:
        handlers = _registered_handlers(proto_file, service.name)
        assert handlers.pop("service") == f"{file.package}.{service.name}"
        assert set(handlers) == {m.name for m in service.method}, "stale stubs: run `make protos`"
        for method in service.method:
            handler = handlers[method.name]
            assert (handler.request_streaming, handler.response_streaming) == (
                method.client_streaming,
                method.server_streaming,
            ), method.name
            request_type = handler.request_deserializer.__self__.DESCRIPTOR.full_name
            assert f".{request_type}" == method.input_type, method.name


def test_zero_values_are_unspecified():
    from services.common.stubs import registry_pb2, trainer_pb2

    for module in (registry_pb2, trainer_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values[0].number == 0
            assert enum.values[0].name.endswith("_UNSPECIFIED"), enum.name
