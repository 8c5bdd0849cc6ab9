"""Prometheus helpers. Metric names follow prometheus.io: base units, ``_total`` counters,
a ``<service>_`` prefix, no unbounded labels."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import start_http_server as _start_http_server


def metrics_payload(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """Body and content type of a ``/metrics`` response."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on its own port, for the gRPC services. 0 turns it off."""
    if port:
        _start_http_server(port, addr=host)
