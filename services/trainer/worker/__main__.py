"""``python -m services.trainer.worker --job-dir DIR``: one attempt of one job.

Reads the config the service wrote (``protocol.read_worker_config``), does the job's kind of
work and talks to the service only through event lines on stdout and the exit code.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from services.client.registry import RegistryClient
from services.common.errors import TuneplexError
from services.trainer.worker.protocol import (
    REGISTRY_KEY_ENV,
    bind_to_parent,
    exit_for,
    read_worker_config,
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one trainer job attempt.")
    parser.add_argument("--job-dir", type=Path, required=True)
    args = parser.parse_args()
    bind_to_parent()
    config = read_worker_config(args.job_dir)
    client = RegistryClient(config.registry_target, api_key=os.environ.get(REGISTRY_KEY_ENV))
    try:
        if config.export is not None:
            from services.trainer.worker import export

            export.run(config, args.job_dir, client)
        elif config.evaluation is not None:
            from services.trainer.worker import evaluate

            evaluate.run(config, args.job_dir, client)
        else:
            from services.trainer.worker import train

            train.run(config, args.job_dir, client)
    except TuneplexError as exc:
        exit_for(exc)
    finally:
        client.close()


if __name__ == "__main__":
    main()
