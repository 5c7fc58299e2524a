"""The mixture layer's per-example gradients (the grad sampler registered with Opacus) equal
autograd run on one example at a time."""

import pytest
import torch
from opacus.grad_sample import GradSampleHooks
from torch import nn

from fedlease.model.lora import AdapterLayout, MixtureLoRALinear, init_router
from fedlease.privacy.grad_sampler import record_dropout

LAYOUTS = {
    "fedlease router, 3 experts": AdapterLayout.fedlease(3, 1),
    "plain LoRA": AdapterLayout(),
    "FedDPA two summed experts": AdapterLayout(2, (0, 1)),
    "B only (FFA-LoRA)": AdapterLayout(1, (0,), train_A=False),
}


def make_layer(layout, dropout=0.0, d_in=6, d_out=5, rank=2):
    torch.manual_seed(0)
    layer = MixtureLoRALinear(nn.Linear(d_in, d_out), rank=rank, alpha=4.0, dropout=dropout)
    E = layout.num_experts
    router = (init_router(d_in, len(layout.router_slots), torch.Generator().manual_seed(1))
              if layout.router_slots else None)
    layer.load_adapters(layout, torch.randn(E, rank, d_in), torch.randn(E, d_out, rank), router)
    return layer


def assert_close_at_scale(actual, expected, msg):
    """Equal up to float rounding: tolerances of 100 ulps of the dtype, relative to each value
    and to the largest value of ``expected`` (a sum or mean of many terms rounds at the
    scale of its terms, not of its result), so the test holds on any CPU's kernels."""
    ulp = torch.finfo(expected.dtype).eps
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=100 * ulp, atol=100 * ulp * scale,
                               msg=msg)


def batch_loss(out):
    """A mean over the batch, as the trainers' losses are."""
    return (out ** 2).sum(dim=(1, 2)).mean()


@pytest.mark.parametrize("name", LAYOUTS)
def test_per_sample_gradients_equal_a_per_example_loop(name):
    layer = make_layer(LAYOUTS[name])
    layer.train()
    x = torch.randn(4, 7, 6)
    hooks = GradSampleHooks(layer, loss_reduction="mean", strict=False)
    batch_loss(layer(x)).backward()
    hooks.remove_hooks()
    params = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    assert set(params) >= {"train_B"} and all(p.grad_sample.shape[0] == 4
                                              for p in params.values())
    for i in range(len(x)):
        grads = torch.autograd.grad(batch_loss(layer(x[i : i + 1])), list(params.values()))
        for (n, p), expected in zip(params.items(), grads, strict=True):
            assert_close_at_scale(p.grad_sample[i], expected, f"{n}, example {i}")


def test_dropout_masks_are_replayed():
    """With LoRA dropout on, the per-example gradients are those of the masks the step drew:
    their mean is the batch gradient autograd computed in the same backward pass."""
    layer = make_layer(AdapterLayout.fedlease(2, 0), dropout=0.5)
    layer.train()
    hooks = GradSampleHooks(layer, loss_reduction="mean", strict=False)
    handle = record_dropout(layer)
    batch_loss(layer(torch.randn(5, 3, 6))).backward()
    hooks.remove_hooks()
    handle.remove()
    for name, p in layer.named_parameters():
        if p.requires_grad:
            assert_close_at_scale(p.grad_sample.mean(0), p.grad, name)
    assert layer.dropped_inputs == []  # every recorded mask was used
