"""`python -m services.gateway`: settings from the environment, then uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from services.common.logs import configure_logging
from services.common.settings import settings_or_exit
from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings


def main() -> None:
    settings = settings_or_exit(GatewaySettings, "gateway")
    configure_logging(settings.log_level, settings.log_json)
    # httpx logs every request at INFO: the engines' health polls would drown the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port,
                log_config=None, access_log=False, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
