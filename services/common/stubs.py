"""Loader of the gRPC stubs that ``make setup`` generates from ``proto/`` with grpcio-tools.

The generated modules import each other as ``tuneplex.<service>.v1``, so their folder goes on
``sys.path`` once, here, and everything else imports the stubs from this module.
"""

from __future__ import annotations

import sys
from pathlib import Path

GENERATED_DIR = Path(__file__).resolve().parent / "_generated"

if not (GENERATED_DIR / "tuneplex").is_dir():
    raise ImportError(
        f"gRPC stubs are missing in {GENERATED_DIR}: run `make setup` (or `make protos`)"
    )
if str(GENERATED_DIR) not in sys.path:
    sys.path.insert(0, str(GENERATED_DIR))

from tuneplex.registry.v1 import registry_pb2, registry_pb2_grpc  # noqa: E402
from tuneplex.trainer.v1 import trainer_pb2, trainer_pb2_grpc  # noqa: E402

__all__ = ["registry_pb2", "registry_pb2_grpc", "trainer_pb2", "trainer_pb2_grpc"]
