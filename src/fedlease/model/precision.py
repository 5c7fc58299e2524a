"""The autocast dtype of ``train.precision``: what the training step (``training.py``) runs in and
the memory estimate (``model/memory.py``) counts with, so it lives below both."""

from __future__ import annotations

import torch

from fedlease.config.schema import PRECISIONS


def autocast_dtype(device: str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device`` (None: no autocast, fp32).

    ``auto`` is bf16 on GPUs that support it, fp16 on older GPUs and fp32 on CPU; fp16 steps
    go through a gradient scaler (see ``LocalTrainer.train``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision = {precision!r}: expected one of {PRECISIONS}")
    cuda = device.startswith("cuda")
    if precision == "auto":
        if not cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("train.precision = 'bf16': this GPU does not support bf16; "
                         "use fp16 or auto")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
