import pytest
import torch
from torch import nn

from fedlease.model.lora import AdapterLayout, MixtureLoRALinear, init_router

ALPHA, RANK = 6.0, 3
# written out, not read from the layer under test: alpha / r
SCALING = 2.0


def make_layer(layout, d_in=12, d_out=10, rank=RANK, seed=0):
    torch.manual_seed(seed)
    layer = MixtureLoRALinear(nn.Linear(d_in, d_out), rank=rank, alpha=ALPHA, dropout=0.0)
    E = layout.num_experts
    A, B = torch.randn(E, rank, d_in), torch.randn(E, d_out, rank)
    router = None
    if layout.router_slots is not None:
        router = init_router(d_in, len(layout.router_slots), torch.Generator().manual_seed(seed))
    layer.load_adapters(layout, A, B, router)
    return layer, A, B, router


def per_slot_reference(layer, A, B, router, layout, x):
    """The formula written slot by slot, as the paper states it (K^2 expert products)."""
    y = layer.base(x)
    probs = torch.softmax(x @ router.t(), dim=-1)
    top_p, top_slot = probs.topk(layout.top_k, dim=-1)
    top_p = top_p / top_p.sum(-1, keepdim=True)
    out = torch.zeros_like(y)
    for t in range(x.shape[0]):
        for j in range(layout.top_k):
            e = layout.router_slots[top_slot[t, j]]
            out[t] += top_p[t, j] * SCALING * (B[e] @ (A[e] @ x[t]))
    return y + out


@pytest.mark.parametrize("K,own", [(1, 0), (2, 1), (3, 0), (4, 2)])
def test_fedlease_layer_matches_per_slot_formula(K, own):
    layout = AdapterLayout.fedlease(K, own)
    layer, A, B, router = make_layer(layout, seed=K)
    x = torch.randn(50, 12)
    expected = per_slot_reference(layer, A, B, router, layout, x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_fixed_top_m_layer_matches_per_slot_formula():
    layout = AdapterLayout(num_experts=4, trainable=(1,), router_slots=(0, 1, 2, 3), top_k=2)
    layer, A, B, router = make_layer(layout, seed=3)
    x = torch.randn(40, 12)
    torch.testing.assert_close(layer(x), per_slot_reference(layer, A, B, router, layout, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("K", [2, 3, 4])
def test_own_expert_always_used(K):
    own = K - 1
    layer, *_ = make_layer(AdapterLayout.fedlease(K, own), seed=K)
    x = torch.randn(500, 12) * 3
    w = layer.expert_weights(x)
    assert (w[:, own] > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(500))
    # the experts a token uses are exactly the distinct experts of its K best router slots,
    # computed here from the router logits
    top_slots = (x @ layer.router.t()).topk(K, dim=-1).indices
    slot_expert = torch.tensor(layer.layout.router_slots)
    expected = torch.tensor([len(set(slot_expert[s].tolist())) for s in top_slots])
    assert torch.equal((w > 0).sum(-1), expected)
    assert expected.min() >= 1 and expected.max() <= K


def test_plain_lora_is_base_plus_scaled_BA():
    layer, A, B, _ = make_layer(AdapterLayout(), seed=1)
    x = torch.randn(7, 12)
    expected = layer.base(x) + SCALING * x @ A[0].t() @ B[0].t()
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("alpha,rank,scaling", [(16.0, 4, 4.0), (8.0, 8, 1.0), (3.0, 2, 1.5)])
def test_lora_update_is_scaled_by_alpha_over_rank(alpha, rank, scaling):
    """The adapter adds exactly ``(alpha / r) B A x`` (scaling written out per case)."""
    torch.manual_seed(0)
    layer = MixtureLoRALinear(nn.Linear(5, 3), rank=rank, alpha=alpha, dropout=0.0)
    A, B = torch.randn(1, rank, 5), torch.randn(1, 3, rank)
    layer.load_adapters(AdapterLayout(), A, B, None)
    x = torch.randn(4, 5)
    torch.testing.assert_close(layer(x) - layer.base(x), scaling * x @ A[0].t() @ B[0].t())


def test_only_own_expert_and_router_are_trainable():
    layout = AdapterLayout.fedlease(3, own_expert=1)
    layer, A, B, _ = make_layer(layout)
    trainable = {n: p.shape for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"train_A": (1, 3, 12), "train_B": (1, 10, 3), "router": (5, 12)}
    layer(torch.randn(5, 12)).sum().backward()
    assert layer.train_A.grad is not None and layer.router.grad is not None
    assert layer.base.weight.grad is None
    # a step on the trainable tensors leaves the other experts untouched
    with torch.no_grad():
        layer.train_A += 1.0
    A_all, _ = layer.experts()
    torch.testing.assert_close(A_all[[0, 2]], A[[0, 2]])
    torch.testing.assert_close(A_all[1], A[1] + 1.0)


def test_frozen_A_for_ffa_lora():
    layer, *_ = make_layer(AdapterLayout(train_A=False))
    names = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert names == {"train_B"}


def test_shape_mismatch_is_a_clear_error():
    layer = MixtureLoRALinear(nn.Linear(8, 8), rank=2, alpha=4, dropout=0.0)
    with pytest.raises(ValueError, match="do not match the layout"):
        layer.load_adapters(AdapterLayout(num_experts=2, trainable=(0,)),
                            torch.zeros(1, 2, 8), torch.zeros(1, 8, 2), None)


def test_layout_round_trips_through_plain_config():
    layout = AdapterLayout.fedlease(4, 2)
    assert AdapterLayout.from_config(layout.to_config()) == layout
    assert layout.router_slots == (0, 1, 2, 3, 2, 2, 2) and layout.top_k == 4


def test_invalid_layouts_are_rejected():
    with pytest.raises(ValueError):
        AdapterLayout(num_experts=2, trainable=(2,))
    with pytest.raises(ValueError):
        AdapterLayout(num_experts=2, trainable=(0,), router_slots=(0, 1), top_k=3)


def differentiable_per_slot(layer, x):
    """``per_slot_reference`` on the layer's own tensors, so gradients can be compared."""
    A, B = layer.experts()
    probs = torch.softmax(x @ layer.router.t(), dim=-1)
    top_p, top_slot = probs.topk(layer.layout.top_k, dim=-1)
    top_p = top_p / top_p.sum(-1, keepdim=True)
    out = layer.base(x)
    for j in range(layer.layout.top_k):
        expert = layer.slot_expert[top_slot[:, j]]  # [T]
        per_token = torch.einsum("tr,tor->to", torch.einsum("ti,tri->tr", x, A[expert]),
                                 B[expert])
        out = out + top_p[:, j : j + 1] * SCALING * per_token
    return out


@pytest.mark.parametrize("trainable", [(2,), (0, 1, 2, 3)])
def test_gradients_match_per_slot_formula(trainable):
    """The fast path (softmax over the kept logits, one addmm, no splice when everything
    trains) has the per-slot formula's gradients, not only its values."""
    own = AdapterLayout.fedlease(4, own_expert=2)
    layout = AdapterLayout(4, trainable, True, own.router_slots, own.top_k)
    fast, *_ = make_layer(layout, seed=5)
    slow, *_ = make_layer(layout, seed=5)
    x = torch.randn(30, 12, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    target = torch.randn(30, 10)
    ((fast(x) - target) ** 2).sum().backward()
    ((differentiable_per_slot(slow, x_ref) - target) ** 2).sum().backward()
    for name in ("train_A", "train_B", "router"):
        torch.testing.assert_close(getattr(fast, name).grad, getattr(slow, name).grad,
                                   rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


def test_all_trainable_experts_are_the_parameters_themselves():
    layout = AdapterLayout(num_experts=2, trainable=(0, 1))
    layer, A, B, _ = make_layer(layout)
    got_A, got_B = layer.experts()
    assert got_A is layer.train_A and got_B is layer.train_B
    x = torch.randn(6, 12)
    expected = layer.base(x) + SCALING * (x @ A.reshape(-1, 12).t()) @ \
        B.permute(1, 0, 2).reshape(10, -1).t()
    torch.testing.assert_close(layer(x), expected)


def test_autocast_forward_keeps_the_frozen_output_dtype_and_value():
    layer, A, B, router = make_layer(AdapterLayout.fedlease(3, own_expert=1), seed=2)
    x = torch.randn(20, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    expected = per_slot_reference(layer, A, B, router, layer.layout, x)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
