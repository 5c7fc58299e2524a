"""The benchmark's reference-style layer must compute the library layer's function, or its
ratios compare different things."""

import torch

from fedlease.model.lora import AdapterLayout

from ..conftest import load_script
from ..model.test_lora import make_layer


def load_bench():
    return load_script("bench_step")


def test_reference_style_layer_computes_the_same_function_and_gradients():
    bench = load_bench()
    layout = AdapterLayout.fedlease(4, own_expert=1)
    fast, *_ = make_layer(layout, seed=7)
    slow, *_ = make_layer(layout, seed=7)
    slow.__class__ = bench.PerSlotMixtureLoRALinear
    x = torch.randn(3, 9, 12)
    torch.testing.assert_close(slow(x), fast(x), rtol=1e-5, atol=1e-5)
    fast(x).square().sum().backward()
    slow(x).square().sum().backward()
    for name in ("train_A", "train_B", "router"):
        torch.testing.assert_close(getattr(slow, name).grad, getattr(fast, name).grad,
                                   rtol=1e-4, atol=1e-5)
