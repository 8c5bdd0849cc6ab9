"""Prometheus helpers. Metric names follow prometheus.io: base units, ``_total`` counters,
a ``<service>_`` prefix, no unbounded labels."""

from __future__ import annotations

import sys

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import start_http_server as _start_http_server


def metrics_payload(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """Body and content type of a ``/metrics`` response."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def start_metrics_server_or_exit(port: int, host: str, *, setting: str, service: str) -> None:
    """Serve ``/metrics`` on its own port, for the gRPC services; 0 turns it off. A port that
    cannot be bound is an operator's setting at fault: one line on stderr naming ``setting``
    (its environment variable) and exit status 2, as ``settings_or_exit`` does."""
    if not port:
        return
    try:
        _start_http_server(port, addr=host)
    except OSError as exc:
        why = exc.strerror or str(exc)
        print(
            f"{service}: invalid settings: {setting}: cannot serve metrics on {host}:{port} "
            f"({why}); free the port, choose another, or set {setting}=0 to turn metrics off",
            file=sys.stderr,
        )
        sys.exit(2)
