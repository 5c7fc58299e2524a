"""A frozen pretrained model shared by every client, with per-client LoRA adapters swapped in:
injection (peft's target rule), loading the base model, and the key names of a client state.

A client's whole trainable state is a flat ``dict[str, Tensor]``: ``adapter.<module>.lora_A``
``[E, r, d_in]``, ``adapter.<module>.lora_B`` ``[E, d_out, r]``, ``adapter.<module>.router``
``[slots, d_in]`` for every adapted linear layer (``ADAPTER_PREFIX``), plus whatever the task's
model adds (a classifier's ``head.*``, ``HEAD_PREFIX``; ``model/classifier.py``). A task's model
(``classifier.py``, ``causal_lm.py``) subclasses ``AdaptedModel``: ``load_state`` installs such a
dict (under an ``AdapterLayout``), ``state`` reads it back. The base model is loaded once and
never reloaded.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from fedlease.errors import ConfigError
from fedlease.model.hub import resolve_model_path
from fedlease.model.lora import AdapterLayout, MixtureLoRALinear
from fedlease.model.quantization import (
    keep_trainable,
    quantization_error,
    quantization_kwargs,
)

ADAPTER_PREFIX = "adapter."
HEAD_PREFIX = "head."


def matches_target(module_name: str, targets: list[str]) -> bool:
    """peft's rule: a target names a module exactly or by its dotted suffix."""
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def inject_adapters(
    backbone: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float
) -> dict[str, MixtureLoRALinear]:
    """Replace every ``nn.Linear`` whose name matches ``targets`` by a ``MixtureLoRALinear``."""
    names = [
        name
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Linear) and matches_target(name, targets)
    ]
    if not names:
        raise ConfigError(
            f"model.target_modules = {targets!r}: match no nn.Linear of the model; expected "
            "names of its linear layers (BERT/RoBERTa: query/value, LLaMA-style: q_proj/v_proj)"
        )
    layers = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        layer = MixtureLoRALinear(getattr(parent, child), rank, alpha, dropout)
        setattr(parent, child, layer)
        layers[name] = layer
    return layers


class AdaptedModel(nn.Module):
    """A frozen pretrained model whose target linears carry swappable LoRA experts.

    ``load_adapters``/``adapter_state`` move the ``adapter.*`` part of a client state in and
    out; subclasses add whatever else a task's state holds (a classifier's head)."""

    def __init__(self, backbone: nn.Module, targets: list[str], rank: int, alpha: float,
                 dropout: float):
        super().__init__()
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.adapters = inject_adapters(backbone, targets, rank, alpha, dropout)
        self.rank = rank

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def representation_dim(self) -> int:
        """Size of the hidden states a client's representation vector is made of."""
        return self.backbone.config.hidden_size

    @contextlib.contextmanager
    def base_only(self):
        """The frozen pretrained model alone: every adapter switched off inside the block, the
        loaded adapters back afterwards."""
        layouts = {name: layer.layout for name, layer in self.adapters.items()}
        for layer in self.adapters.values():
            layer.layout = None
        try:
            yield self
        finally:
            for name, layer in self.adapters.items():
                layer.layout = layouts[name]

    def adapter_shapes(self) -> dict[str, tuple[int, int]]:
        """``(d_in, d_out)`` of each adapted layer, by module name."""
        return {n: (m.in_features, m.out_features) for n, m in self.adapters.items()}

    def load_adapters(self, state: dict[str, torch.Tensor], layout: AdapterLayout) -> None:
        for name, layer in self.adapters.items():
            key = ADAPTER_PREFIX + name + "."
            missing = [k for k in ("lora_A", "lora_B") if key + k not in state]
            if missing:
                raise KeyError(f"client state lacks {[key + k for k in missing]}")
            layer.load_adapters(
                layout, state[key + "lora_A"], state[key + "lora_B"], state.get(key + "router")
            )

    def adapter_state(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in self.adapters.items():
            for k, v in layer.adapter_state().items():
                out[f"{ADAPTER_PREFIX}{name}.{k}"] = v
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def position_limit(backbone: nn.Module, tokenizer) -> int | None:
    """The longest sequence the model reads (its position table, or the tokenizer's limit
    when smaller, e.g. RoBERTa's 512 of 514 positions); None when neither says."""
    limits = [getattr(backbone.config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 10**8]  # 1e30: "no limit"
    return min(limits, default=None)


def load_pretrained(path: str, auto_class_name: str = "AutoModel", *, download: bool = False,
                    revision: str = "", quantization: str = "none", device: str = "cpu"):
    """Tokenizer and frozen model (``transformers.<auto_class_name>``) from a local directory
    or a hub id's snapshot in the local cache (``model/hub.py``), its linear layers quantized
    as ``model.quantization`` says (``model/quantization.py``)."""
    import transformers

    folder = resolve_model_path(path, download, revision)
    quantized = quantization_kwargs(quantization, device)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        # safetensors weights only: a pickled pytorch_model.bin could run code when loaded
        backbone = getattr(transformers, auto_class_name).from_pretrained(
            folder, local_files_only=True, use_safetensors=True, **quantized)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.path = {path!r}: not a loadable local model directory with "
                          f"safetensors weights ({err})") from None
    except (ImportError, RuntimeError) as err:
        if not quantized:
            raise
        raise quantization_error(quantization, err) from None
    if quantized:
        keep_trainable(backbone)
    backbone.eval()
    return backbone, tokenizer
