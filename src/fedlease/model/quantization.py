"""``model.quantization``: the frozen base's linear layers stored in 8 or 4 bits (bitsandbytes).

As in QLoRA, 4-bit is NF4 with double quantization and bf16 compute; 8-bit is LLM.int8(). Only
the base model's own linear layers are quantized, when it loads: its output layer (transformers
skips it), the adapters, routers and per-client heads are separate float32 tensors, trained and
aggregated exactly as with a full-precision base. bitsandbytes (>= 0.48) runs both on CPU as well
as CUDA, gradients through the quantized layers included.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from fedlease.errors import ConfigError
from fedlease.registry import Registry

BITSANDBYTES_DEVICES = ("cpu", "cuda")  # what this module was checked on
# bytes a quantized weight takes per parameter, with its scales: 4-bit NF4 with double
# quantization keeps one 8-bit scale per 64 weights (and an fp32 one per 256 scales); 8-bit one
# fp32 scale per output row (counted apart, ~0)
BYTES_PER_WEIGHT = {"8bit": 1.0, "4bit": 0.5 + 1 / 64 + 4 / (64 * 256)}


def nf4_config(torch, bits_and_bytes_config):
    """QLoRA's 4-bit: NF4, double quantization, bf16 compute."""
    return bits_and_bytes_config(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                 bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)


# model.quantization -> its transformers BitsAndBytesConfig, given torch and that class (both
# imported only when a quantized base loads); None: full precision
QUANTIZATIONS: Registry[Callable | None] = Registry("model.quantization", {
    "none": None,
    "8bit": lambda torch, bits_and_bytes_config: bits_and_bytes_config(load_in_8bit=True),
    "4bit": nf4_config,
})


def quantization_kwargs(quantization: str, device: str) -> dict:
    """``from_pretrained`` keyword arguments that load the base quantized on ``device``
    (``{}`` for ``none``); a one-line ``ConfigError`` naming what is missing otherwise."""
    build = QUANTIZATIONS[quantization]
    if build is None:
        return {}
    where = f"model.quantization = {quantization!r}"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{where} needs the bitsandbytes package: pip install "
                          "'fedlease[quant]', or set model.quantization = \"none\"")
    kind = device.split(":")[0]
    if kind not in BITSANDBYTES_DEVICES:
        raise ConfigError(f"{where}: bitsandbytes does not run on train.device = {device!r}; "
                          "expected cpu or cuda, or model.quantization = \"none\"")
    import torch
    from transformers import BitsAndBytesConfig

    return {"quantization_config": build(torch, BitsAndBytesConfig),
            "device_map": {"": device}}


def keep_trainable(backbone) -> None:
    """Switch off bitsandbytes' CPU inference format: a 4-bit layer that runs in eval mode
    without gradients repacks its weight, once and for good, into a layout whose matmul has no
    backward pass, and its later training fails (or, without a bias, loses the gradients that
    flow through it). Every client is evaluated between its trainings, so it must not."""
    import bitsandbytes as bnb

    for module in backbone.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def quantization_error(quantization: str, err: Exception) -> ConfigError:
    """The one-line error of a platform on which bitsandbytes cannot load the model."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ConfigError(f"model.quantization = {quantization!r}: bitsandbytes cannot quantize "
                       f"the model on this platform ({first}); set model.quantization = "
                       "\"none\"")
