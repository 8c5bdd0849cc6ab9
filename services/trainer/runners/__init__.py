"""Where job workers run: a local subprocess or a Kubernetes Job; both run
``python -m services.trainer.worker`` and speak the same event lines."""
