"""A linear layer with a stack of LoRA experts, optionally mixed by a top-k router.

One layer type serves every algorithm of the library:

* plain LoRA is one expert, summed;
* FedDPA is two experts (global + personal), summed;
* FedLEASE is K experts mixed by a router with 2K-1 slots, slots K..2K-2 all mapping to the
  client's own expert, the K best slots kept per token (see ``AdapterLayout.fedlease``).

Each expert is computed once per forward: the stacked A matrices are applied as one
``[E*r, d_in]`` matmul, weighted per token, and the stacked B matrices as one ``[d_out, E*r]``
matmul added onto the frozen output in the same kernel (``addmm``). Only the experts listed in
``layout.trainable`` are ``nn.Parameter`` s; the others are buffers, so an optimizer (and its
weight decay) never touches them. ``benchmarks/bench_step.py`` measures the cost against peft.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

# the tensors of one adapted layer, by their layer-local names
ADAPTER_PARTS = ("lora_A", "lora_B", "router")


def adapter_part_shape(part: str, d_in: int, d_out: int, rank: int,
                       count: int) -> tuple[int, ...] | None:
    """THE shape rule of a layer's adapter tensors (``count``: its experts, or for the router
    its slots): ``lora_A [count, rank, d_in]``, ``lora_B [count, d_out, rank]``, ``router
    [count, d_in]``; None for a name that is no adapter part."""
    return {"lora_A": (count, rank, d_in), "lora_B": (count, d_out, rank),
            "router": (count, d_in)}.get(part)


@dataclass(frozen=True)
class AdapterLayout:
    """What the adapters of every adapted layer look like and what of them trains."""

    num_experts: int = 1
    trainable: tuple[int, ...] = (0,)
    train_A: bool = True
    router_slots: tuple[int, ...] | None = None  # slot -> expert; None: experts summed
    top_k: int = 0  # router slots kept per token

    def __post_init__(self):
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if any(not 0 <= e < self.num_experts for e in self.trainable):
            raise ValueError(
                f"trainable experts {self.trainable} outside 0..{self.num_experts - 1}")
        if self.router_slots is not None:
            if any(not 0 <= e < self.num_experts for e in self.router_slots):
                raise ValueError(f"router slots {self.router_slots} name unknown experts")
            if not 1 <= self.top_k <= len(self.router_slots):
                raise ValueError(f"top_k={self.top_k} must be in 1..{len(self.router_slots)}")

    @classmethod
    def fedlease(cls, num_experts: int, own_expert: int) -> AdapterLayout:
        """2K-1 slots: one per expert, then K-1 more for the own expert; keep the top K."""
        slots = tuple(range(num_experts)) + (own_expert,) * (num_experts - 1)
        return cls(num_experts, (own_expert,), True, slots, num_experts)

    def to_config(self) -> dict:
        """Plain values, to travel in a message next to the tensors."""
        return {
            "num_experts": self.num_experts,
            "trainable": list(self.trainable),
            "train_A": self.train_A,
            "router_slots": None if self.router_slots is None else list(self.router_slots),
            "top_k": self.top_k,
        }

    @classmethod
    def from_config(cls, config: dict) -> AdapterLayout:
        slots = config.get("router_slots")
        return cls(
            num_experts=int(config["num_experts"]),
            trainable=tuple(int(e) for e in config["trainable"]),
            train_A=bool(config.get("train_A", True)),
            router_slots=None if slots is None else tuple(int(s) for s in slots),
            top_k=int(config.get("top_k", 0)),
        )


class MixtureLoRALinear(nn.Module):
    """``y = W0 x + sum_e w_e(x) (alpha/r) B_e A_e dropout(x)`` around a frozen ``nn.Linear``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.layout: AdapterLayout | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def load_adapters(
        self,
        layout: AdapterLayout,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
        router: torch.Tensor | None,
    ) -> None:
        """Install copies of the adapter tensors under ``layout``; trainable ones become
        parameters, the others buffers."""
        shape = functools.partial(adapter_part_shape, d_in=self.in_features,
                                  d_out=self.out_features, rank=self.rank)
        expect_A = shape("lora_A", count=layout.num_experts)
        expect_B = shape("lora_B", count=layout.num_experts)
        if tuple(lora_A.shape) != expect_A or tuple(lora_B.shape) != expect_B:
            raise ValueError(
                f"adapter shapes A{tuple(lora_A.shape)} B{tuple(lora_B.shape)} do not match the "
                f"layout (expected A{expect_A} B{expect_B})"
            )
        device = self.base.weight.device
        self.layout = layout
        idx = torch.tensor(layout.trainable, dtype=torch.long, device=device)
        self.register_buffer("trainable_idx", idx, persistent=False)
        self.register_buffer("frozen_A", lora_A.detach().to(device, torch.float32).clone(), False)
        self.register_buffer("frozen_B", lora_B.detach().to(device, torch.float32).clone(), False)
        self.train_A = nn.Parameter(self.frozen_A[idx].clone()) if layout.train_A else None
        self.train_B = nn.Parameter(self.frozen_B[idx].clone())
        # every expert trainable, in order (plain LoRA, FedDPA...): nothing frozen to splice in
        self.all_trainable = layout.trainable == tuple(range(layout.num_experts))
        if layout.router_slots is None:
            self.router = None
        else:
            expect = shape("router", count=len(layout.router_slots))
            if router is None or tuple(router.shape) != expect:
                got = None if router is None else tuple(router.shape)
                raise ValueError(
                    f"router shape {got} does not match the layout (expected {expect})")
            self.router = nn.Parameter(router.detach().to(device, torch.float32).clone())
            slots = torch.tensor(layout.router_slots, dtype=torch.long, device=device)
            self.register_buffer("slot_expert", slots, persistent=False)

    def experts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All experts' A ``[E, r, d_in]`` and B ``[E, d_out, r]``, trainable ones spliced in."""
        if self.all_trainable:
            return (self.frozen_A if self.train_A is None else self.train_A), self.train_B
        A = self.frozen_A
        if self.train_A is not None:
            A = A.index_copy(0, self.trainable_idx, self.train_A)
        B = self.frozen_B.index_copy(0, self.trainable_idx, self.train_B)
        return A, B

    def expert_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token weight of each expert ``[..., E]``: softmax over slots, top-k kept and
        renormalised, the weights of slots that map to the same expert added up.

        The softmax over all slots renormalised over the kept ones is the softmax over the kept
        slots' logits (softmax is monotone, the dropped terms cancel), computed as such."""
        top_logit, top_slot = (x @ self.router.t()).topk(self.layout.top_k, dim=-1)
        top_p = torch.softmax(top_logit, dim=-1)
        weights = top_p.new_zeros(*x.shape[:-1], self.layout.num_experts)
        return weights.scatter_add(-1, self.slot_expert[top_slot], top_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.layout is None:
            return y
        A, B = self.experts()
        E, r = self.layout.num_experts, self.rank
        h = self.dropout(x).to(A.dtype) @ A.reshape(E * r, -1).t()  # [..., E*r]
        if self.router is not None:
            w = self.expert_weights(x.to(A.dtype))  # [..., E]
            h = (h.unflatten(-1, (E, r)) * w.unsqueeze(-1)).flatten(-2)
        B_stacked = B.permute(1, 0, 2).reshape(-1, E * r)  # [d_out, E*r]
        # y + scaling * h B^T in one kernel, in the frozen output's dtype
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, E * r).to(y.dtype),
                          B_stacked.t().to(y.dtype), alpha=self.scaling)
        return out.view_as(y)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of the full adapter tensors, under the layer-local names."""
        A, B = self.experts()
        state = {"lora_A": A.detach().cpu().clone(), "lora_B": B.detach().cpu().clone()}
        if self.router is not None:
            state["router"] = self.router.detach().cpu().clone()
        return state


def init_lora(in_features: int, out_features: int, rank: int, generator: torch.Generator):
    """peft's default init: A Kaiming-uniform (as nn.Linear), B zero, so the adapter starts at 0."""
    bound = 1.0 / math.sqrt(in_features)
    A = (torch.rand(1, rank, in_features, generator=generator) * 2 - 1) * bound
    return A, torch.zeros(1, out_features, rank)


def init_router(in_features: int, num_slots: int, generator: torch.Generator) -> torch.Tensor:
    """nn.Linear's default weight init (uniform in +-1/sqrt(d_in))."""
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(num_slots, in_features, generator=generator) * 2 - 1) * bound
