"""fedlease: federated fine-tuning of language models with adaptive LoRA experts."""

__version__ = "0.1.0"
__all__ = ["load_client_model"]


def __getattr__(name: str):
    # imported on first use: `import fedlease` (and the CLI's start) stays free of torch
    if name == "load_client_model":
        from fedlease.inference import load_client_model

        return load_client_model
    raise AttributeError(f"module 'fedlease' has no attribute {name!r}")
