"""tuneplex: fine-tune LLMs into LoRA adapters and serve many adapters on one base model."""
