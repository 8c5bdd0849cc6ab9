"""The registry: datasets, LoRA adapters and models as immutable, content-addressed versions."""
