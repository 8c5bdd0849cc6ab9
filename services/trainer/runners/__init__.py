"""Where job workers run: a local subprocess or a Kubernetes Job; both run
``python -m services.trainer.worker`` and read the event lines of ``worker.protocol``."""
