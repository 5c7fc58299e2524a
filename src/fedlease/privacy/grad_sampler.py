"""Per-example gradients of the mixture layer (``MixtureLoRALinear``) for Opacus.

Opacus computes per-sample gradients from a module's input and the gradient of its output.
Its generic (functorch) fallback cannot serve this layer: it refuses modules with buffers (the
frozen experts are buffers), replays the module on its first input only, and would
differentiate the frozen base weight too. The sampler below differentiates the layer itself,
per example, with ``torch.func`` (``vmap`` of ``grad``), through the same ``forward`` the
training step ran, with respect to its trainable tensors only (``train_A``, ``train_B``,
``router``). LoRA dropout draws a random mask in ``forward``; ``record_dropout`` keeps each
forward's dropped input so the replay uses the very mask the step used.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn
from torch.func import functional_call, grad, vmap

from fedlease.model.lora import MixtureLoRALinear


class _Unhooked(nn.Module):
    """Calls the layer's ``forward`` itself, so the replay does not fire Opacus' hooks on it."""

    def __init__(self, layer: MixtureLoRALinear):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.forward(x)


class _ReplayDropout(nn.Module):
    """Stands in for the layer's dropout during the replay: returns the recorded output."""

    def __init__(self):
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


def record_dropout(layer: MixtureLoRALinear):
    """Keep the output of the layer's dropout at every training forward (a stack the sampler
    pops, as Opacus pops the layer's inputs); returns the hook's handle."""
    layer.dropped_inputs = []

    def keep(module, inputs, output):
        if layer.training and torch.is_grad_enabled():
            layer.dropped_inputs.append(output.detach())

    return layer.dropout.register_forward_hook(keep)


@register_grad_sampler(MixtureLoRALinear)
def mixture_grad_sample(layer: MixtureLoRALinear, activations: list[torch.Tensor],
                        backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """``{parameter: [batch, *parameter.shape]}``: the gradient of ``<layer(x_i), g_i>`` with
    respect to each trainable tensor, per example ``i`` (``g``: the output's gradient, already
    scaled by Opacus for a mean loss)."""
    x = activations[0]
    stack = getattr(layer, "dropped_inputs", None)
    dropped = stack.pop() if stack else x  # no hook (dropout unused): the input itself
    params = {name: p for name, p in layer.named_parameters(recurse=False) if p.requires_grad}
    dropout, replay, unhooked = layer.dropout, _ReplayDropout(), _Unhooked(layer)

    def inner(values, x_i, dropped_i, g_i):
        replay.value = dropped_i.unsqueeze(0)
        out = functional_call(unhooked, values, (x_i.unsqueeze(0),), strict=False)
        return (out * g_i.unsqueeze(0)).sum()

    layer.dropout = replay
    try:
        detached = {"layer." + name: p.detach() for name, p in params.items()}
        per_example = vmap(grad(inner), in_dims=(None, 0, 0, 0))(detached, x, dropped,
                                                                   backprops)
    finally:
        layer.dropout = dropout
    return {p: per_example["layer." + name] for name, p in params.items()}
