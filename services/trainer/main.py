"""Entry point: ``python -m services.trainer`` (or ``tuneplex serve trainer``)."""

from __future__ import annotations

import asyncio
import logging
import signal

from grpc_health.v1 import health_pb2

from services.common.grpc_server import build_server
from services.common.logs import configure_logging
from services.common.metrics import start_metrics_server_or_exit
from services.common.settings import settings_or_exit
from services.common.stubs import trainer_pb2, trainer_pb2_grpc
from services.trainer.admission import Admission
from services.trainer.artifacts import RegistryPullCache
from services.trainer.device import cluster_gpu_device, detect_device
from services.trainer.queue import JobQueue
from services.trainer.runners.base import Runner
from services.trainer.service import TrainerServicer
from services.trainer.settings import TrainerSettings
from services.trainer.store import JobStore
from services.trainer.supervisor import JobSupervisor
from services.trainer.worker.protocol import GATEWAY_KEY_ENV, REGISTRY_KEY_ENV

log = logging.getLogger("services.trainer")
SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
SHUTDOWN_GRACE_SECONDS = 5.0


def build_runner(settings: TrainerSettings, store: JobStore) -> Runner:
    """The runner the settings name; typed with the Protocol so mypy holds both to it."""
    if settings.runner == "kubernetes":
        from services.trainer.runners.kubernetes import KubernetesRunner

        return KubernetesRunner(
            settings, lambda job_id: store.get(job_id).estimated_peak_memory_bytes
        )
    from services.trainer.runners.local import LocalRunner

    keys = {
        REGISTRY_KEY_ENV: settings.registry_api_key_value(),
        GATEWAY_KEY_ENV: settings.gateway_api_key_value(),
    }
    return LocalRunner({env: key for env, key in keys.items() if key})


async def recover(store: JobStore, supervisor: JobSupervisor, queue: JobQueue) -> int:
    """Queue again every job a previous run of the service left unfinished. A job that was
    running lost its worker with the service (PDEATHSIG); its next attempt resumes from the
    newest complete checkpoint."""
    jobs = store.active()
    for job in jobs:
        if job.state != trainer_pb2.JOB_STATE_QUEUED:
            await supervisor.record(
                job.id,
                trainer_pb2.JobEvent(
                    log=trainer_pb2.LogLine(
                        message="the trainer service restarted; the job resumes from its last "
                        "checkpoint"
                    )
                ),
            )
        queue.submit(job.id)
    return len(jobs)


async def serve(settings: TrainerSettings) -> None:
    from services.client.registry import RegistryClient

    work = settings.work_dir
    work.mkdir(parents=True, exist_ok=True)
    store = JobStore(work / "jobs.sqlite")
    registry = RegistryClient(settings.registry_target, api_key=settings.registry_api_key_value())
    if settings.runner == "kubernetes" and settings.k8s_gpus:
        device = cluster_gpu_device(settings.k8s_gpus, settings.device_memory_bytes or 80 * 1024**3)
    else:  # local, or Kubernetes CPU nodes (sized by DEVICE_MEMORY_BYTES when set)
        device = await asyncio.to_thread(detect_device, settings.device_memory_bytes)
    admission = Admission(RegistryPullCache(registry, work / "cache"), device, settings.runner)
    supervisor = JobSupervisor(
        store,
        build_runner(settings, store),
        work_dir=work,
        registry_target=settings.registry_target,
        max_attempts=settings.max_attempts,
        cancel_grace_seconds=settings.cancel_grace_seconds,
        gateway_url=settings.gateway_url,
    )
    queue = JobQueue(supervisor.run, settings.max_concurrent_jobs)
    servicer = TrainerServicer(store, admission, queue, supervisor)
    server, port, health = await build_server(
        host=settings.host,
        port=settings.port,
        api_key=settings.api_key_value(),
        register=[lambda s: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
    )
    recovered = await recover(store, supervisor, queue)
    queue.start()
    log.info(
        "trainer serving on %s:%d (device %s, runner %s, %d job(s) recovered)",
        settings.host,
        port,
        device.name,
        settings.runner,
        recovered,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down; running jobs resume when the service starts again")
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(SHUTDOWN_GRACE_SECONDS)
    await supervisor.stop_all()  # before the queue: its slots are what watch the workers
    await queue.stop()
    registry.close()
    store.close()
    log.info("trainer stopped")


def main() -> None:
    settings = settings_or_exit(TrainerSettings, "trainer")
    configure_logging(settings.log_level, settings.log_json)
    # Before anything binds or starts: a taken port is a bad setting, refused like one.
    start_metrics_server_or_exit(
        settings.metrics_port,
        settings.host,
        setting=f"{TrainerSettings.model_config['env_prefix']}METRICS_PORT",
        service="trainer",
    )
    asyncio.run(serve(settings))
