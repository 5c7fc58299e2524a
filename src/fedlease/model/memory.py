"""Know before you start: the peak memory of one training process, estimated from the model's
config alone (its layers built on the meta device, no weights read), beside the device's free
memory; and gradient checkpointing, the setting that trades compute for activation memory.

The estimate is the sum of

* the frozen base's weights at their precision (the checkpoint's dtype; 1 or ~0.52 bytes per
  linear weight when ``model.quantization`` is 8bit or 4bit);
* the adapters: every expert of every adapted layer, the router, and for the trainable part
  its gradient and AdamW's two moments (float32);
* the activations kept for the backward pass of one batch of the longest sequences: per token
  and layer, the inputs of the layer's norms, attention's query, key, value and output, the
  MLP's gate, up and activated tensors, and each adapter's input; plus one more layer's worth
  for the backward pass's own temporaries, and the answer positions' logits (causal LMs).
  With checkpointing only each layer's input is kept, and one layer is recomputed at a time.

``docs/benchmarks.md`` sets it beside measured peaks (``benchmarks/bench_memory.py``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
from torch import nn

from fedlease.config.schema import RunConfig
from fedlease.errors import ConfigError
from fedlease.model.adapted import matches_target
from fedlease.model.precision import autocast_dtype
from fedlease.model.quantization import BYTES_PER_WEIGHT

GiB = 2**30
# per token and layer, what a decoder layer keeps for backward (counted with autograd's saved-tensor
# hooks on SmolLM2): six hidden-size tensors (the inputs of its two norms and of its attention,
# attention's query and output, the residual), keys and values, the MLP's gate, up and activated
# tensors; and per adapted linear its input and its dropout's output (the router reads the
# input), the experts' rank outputs and the router's logits and weights
HIDDEN_TENSORS_PER_LAYER = 6
MLP_TENSORS_PER_LAYER = 3
ADAPTER_INPUT_TENSORS = 2
# logits of the answer positions kept by the loss: the logits, their log-softmax, its gradient
LOGIT_COPIES = 3
FLOAT32 = 4


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model, read from its config without its weights."""

    quantizable: int  # weights of the linear layers a quantized load stores in 8 or 4 bits
    other: int  # every other parameter: embeddings, norms, biases, the output layer
    weight_bytes: int  # bytes per parameter of the checkpoint's dtype
    hidden: int
    intermediate: int
    layers: int
    kv_hidden: int  # width of the keys (and values): kv heads x head size
    heads: int
    vocab: int  # 0: no vocabulary logits (an encoder's hidden states are pooled)
    eager_attention: bool  # the attention probabilities are materialized and kept
    adapted: tuple[tuple[int, int], ...]  # (d_in, d_out) of every adapted linear


@dataclass(frozen=True)
class MemorySettings:
    """The settings of a run the estimate depends on."""

    quantization: str
    batch_size: int
    sequence: int  # the longest input, in tokens
    answer: int  # positions whose vocabulary logits the loss needs (0: none)
    rank: int
    experts: int  # the most experts a client's layout holds
    checkpointing: bool
    activation_bytes: int  # bytes per activation value


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    adapters: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.adapters + self.activations

    def describe(self) -> str:
        return (f"{gib(self.total)} (base weights {gib(self.weights)}, adapters and optimizer "
                f"{gib(self.adapters)}, activations {gib(self.activations)})")


def gib(n: int | float) -> str:
    """A size in GiB, or in MiB below one GiB."""
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


def read_model_shape(folder: str, auto_class_name: str, targets: list[str]) -> ModelShape:
    """The model of ``folder`` built on the meta device (no memory, no weights read)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        model = getattr(transformers, auto_class_name).from_config(config)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = {name: m for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and m is not output}
    quantizable = sum(m.weight.numel() for m in linears.values())
    total = sum(p.numel() for p in model.parameters())
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = (getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
                    or 4 * hidden)
    dtype = model.dtype if model.dtype.is_floating_point else torch.float32
    return ModelShape(
        quantizable=quantizable, other=total - quantizable,
        weight_bytes=torch.finfo(dtype).bits // 8, hidden=hidden, intermediate=intermediate,
        layers=config.num_hidden_layers, kv_hidden=kv_heads * head_dim, heads=heads,
        vocab=output.weight.shape[0] if output is not None else 0,
        eager_attention=getattr(model.config, "_attn_implementation", "") == "eager",
        adapted=tuple((m.in_features, m.out_features) for name, m in linears.items()
                      if matches_target(name, targets)))


def run_settings(config: RunConfig, shape: ModelShape, sequence: int) -> MemorySettings:
    """The estimate's settings of a run whose longest input is ``sequence`` tokens; a client's
    layout is bounded by ``max(federation.max_experts, 2)`` experts (FedDPA: 2)."""
    dtype = autocast_dtype(config.train.device, config.train.precision)
    return MemorySettings(
        quantization=config.model.quantization, batch_size=config.train.batch_size,
        sequence=sequence, answer=config.model.max_new_tokens + 1, rank=config.lora.rank,
        experts=max(config.federation.max_experts, 2),
        checkpointing=config.train.gradient_checkpointing,
        activation_bytes=shape.weight_bytes if dtype is None else torch.finfo(dtype).bits // 8)


def estimate_memory(shape: ModelShape, s: MemorySettings) -> MemoryEstimate:
    """The peak memory of one training process (see the module's docstring)."""
    bits = BYTES_PER_WEIGHT.get(s.quantization, shape.weight_bytes)
    weights = int(shape.quantizable * bits + shape.other * shape.weight_bytes)
    slots = 2 * s.experts - 1
    stored = trainable = 0
    for d_in, d_out in shape.adapted:
        stored += s.experts * s.rank * (d_in + d_out) + slots * d_in
        trainable += s.rank * (d_in + d_out) + slots * d_in
    adapters = FLOAT32 * (stored + 4 * trainable)  # the trainable copy, its grad, 2 moments
    adapted_per_layer = sum(ADAPTER_INPUT_TENSORS * d_in + s.experts * s.rank + 2 * slots
                            for d_in, _ in shape.adapted) / max(shape.layers, 1)
    layer = (HIDDEN_TENSORS_PER_LAYER * shape.hidden + 2 * shape.kv_hidden
             + MLP_TENSORS_PER_LAYER * shape.intermediate + adapted_per_layer
             + (2 * shape.heads * s.sequence if shape.eager_attention else 0))
    # checkpointing keeps each layer's input and recomputes one layer at a time
    kept = shape.layers * (shape.hidden if s.checkpointing else layer)
    per_token = kept + layer * (2 if s.checkpointing else 1)
    tokens = s.batch_size * s.sequence
    logits = LOGIT_COPIES * s.batch_size * s.answer * shape.vocab * FLOAT32
    activations = int(tokens * per_token * s.activation_bytes + logits)
    return MemoryEstimate(weights, adapters, activations)


def fitting_changes(shape: ModelShape, s: MemorySettings, free: int) -> list[str]:
    """Changes of the settings under which the estimate fits ``free``: each alone, else all
    together."""
    candidates = []
    if not s.checkpointing:
        candidates.append(("train.gradient_checkpointing = true", {"checkpointing": True}))
    for q in ("8bit", "4bit"):
        if BYTES_PER_WEIGHT[q] < BYTES_PER_WEIGHT.get(s.quantization, shape.weight_bytes):
            candidates.append((f'model.quantization = "{q}"', {"quantization": q}))
    batch = s.batch_size // 2
    while batch >= 1:
        candidates.append((f"train.batch_size = {batch}", {"batch_size": batch}))
        batch //= 2
    fits = []
    for text, change in candidates:
        estimate = estimate_memory(shape, dataclasses.replace(s, **change))
        if estimate.total <= free and not any(t.startswith(text.split(" = ")[0]) for t in fits):
            fits.append(f"{text} ({gib(estimate.total)})")
    if fits:
        return fits
    smallest = dataclasses.replace(s, checkpointing=True, quantization="4bit", batch_size=1)
    estimate = estimate_memory(shape, smallest)
    if estimate.total <= free:
        return ["train.gradient_checkpointing = true, model.quantization = \"4bit\" and "
                f"train.batch_size = 1 together ({gib(estimate.total)})"]
    return []


def free_memory(device: str) -> int | None:
    """Bytes free on ``device``: CUDA's own count, or the system's available memory (Linux
    ``MemAvailable``); None where neither is known."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(shape: ModelShape, settings: MemorySettings, device: str, enforce: bool) -> str:
    """The line that sets the estimate beside ``device``'s free memory; with ``enforce``, a
    ``ConfigError`` naming the settings that would fit if it does not."""
    estimate = estimate_memory(shape, settings)
    free = free_memory(device)
    line = (f"estimated peak memory of one training process: {estimate.describe()}; free on "
            f"{device}: {'unknown' if free is None else gib(free)}")
    if enforce and free is not None and estimate.total > free:
        fits = fitting_changes(shape, settings, free)
        advice = ("settings that would fit: " + "; ".join(fits) if fits else
                  "no setting of gradient checkpointing, 4-bit quantization and batch size "
                  "fits; use a device with more free memory")
        raise ConfigError(f"train.device = {device!r}: the estimated peak memory of one "
                          f"training process, {estimate.describe()}, exceeds the {gib(free)} "
                          f"free there; {advice} (train.check_memory = false runs anyway)")
    return line


def enable_gradient_checkpointing(backbone: nn.Module) -> None:
    """``train.gradient_checkpointing``: transformers' own, non-reentrant (no input gradients
    needed; dropout's random state is replayed, so the gradients are the same)."""
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing = true: {type(backbone).__name__} "
                          "does not support gradient checkpointing; set it to false")
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
