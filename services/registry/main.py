"""Entry point: ``python -m services.registry`` (or ``tuneplex serve registry``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from grpc_health.v1 import health_pb2

from services.common.errors import InvalidArgument, TuneplexError
from services.common.grpc_server import build_server
from services.common.logs import configure_logging
from services.common.metrics import start_metrics_server_or_exit
from services.common.settings import settings_or_exit
from services.registry.artifacts import ArtifactRegistry
from services.registry.gc import run_gc_forever
from services.registry.metadata import MetadataStore
from services.registry.service import SERVICE_NAME, RegistryServicer, add_to_server
from services.registry.settings import RegistrySettings
from services.registry.storage import BlobStore, LocalBlobStore, S3BlobStore

log = logging.getLogger("services.registry")
SHUTDOWN_GRACE_SECONDS = 10.0


def build_store(settings: RegistrySettings) -> BlobStore:
    if settings.storage == "s3":
        try:
            return S3BlobStore(
                endpoint=settings.s3_endpoint,
                bucket=settings.s3_bucket,
                access_key=settings.s3_access_key or "",
                secret_key=settings.s3_secret_key.get_secret_value()
                if settings.s3_secret_key
                else "",
                secure=settings.s3_secure,
                region=settings.s3_region,
                prefix=settings.s3_prefix,
            )
        except ValueError as exc:  # the SDK's verdict on an endpoint or bucket name
            raise InvalidArgument(f"S3 settings: {exc}") from None
    return LocalBlobStore(settings.resolved_blob_dir())


def open_metadata(settings: RegistrySettings) -> MetadataStore:
    """PostgreSQL when ``database_url`` is set, else the SQLite file (the embedded default)."""
    if settings.database_url is not None:
        from services.registry.metadata_postgres import PostgresDatabase

        return MetadataStore(PostgresDatabase(settings.database_url.get_secret_value()))
    return MetadataStore(settings.resolved_db_path())


async def serve(settings: RegistrySettings) -> None:
    store = await asyncio.to_thread(build_store, settings)
    metadata = await asyncio.to_thread(open_metadata, settings)
    registry = ArtifactRegistry(settings, store, metadata)
    server, port, health = await build_server(
        host=settings.host,
        port=settings.port,
        api_key=settings.api_key_value(),
        register=[add_to_server(RegistryServicer(registry))],
        service_names=[SERVICE_NAME],
    )
    log.info(
        "registry serving on %s:%d (storage: %s, metadata: %s)",
        settings.host,
        port,
        settings.storage,
        metadata.description,
    )
    gc_task = asyncio.create_task(
        run_gc_forever(store, metadata, settings.gc_grace_seconds, settings.gc_interval_seconds)
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down: finishing RPCs in flight (up to %.0fs)", SHUTDOWN_GRACE_SECONDS)
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(SHUTDOWN_GRACE_SECONDS)
    gc_task.cancel()
    metadata.close()
    log.info("registry stopped")


def main() -> None:
    settings = settings_or_exit(RegistrySettings, "registry")
    configure_logging(settings.log_level, settings.log_json)
    # Before anything binds or starts: a taken port is a bad setting, refused like one.
    start_metrics_server_or_exit(
        settings.metrics_port,
        settings.host,
        setting=f"{RegistrySettings.model_config['env_prefix']}METRICS_PORT",
        service="registry",
    )
    try:
        asyncio.run(serve(settings))
    except TuneplexError as exc:  # storage unreachable or misconfigured at startup
        log.error("registry cannot start: %s", exc.message)
        sys.exit(2 if isinstance(exc, InvalidArgument) else 1)
