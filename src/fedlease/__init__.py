"""fedlease: federated fine-tuning of language models with adaptive LoRA experts."""

__version__ = "0.1.0"
