import pytest
import torch

from fedlease.algorithms.wire import decode, encode, roundtrip, wire_bytes
from fedlease.errors import ConfigError


@pytest.fixture
def tensors():
    gen = torch.Generator().manual_seed(0)
    return {"adapter.q.lora_A": torch.randn(4, 2, 16, generator=gen),
            "adapter.q.lora_B": torch.randn(4, 16, 2, generator=gen) * 1e-3,
            "adapter.q.router": torch.zeros(7, 16)}


def test_float32_is_sent_as_held(tensors):
    assert roundtrip(tensors, "float32") is tensors
    assert wire_bytes(tensors, "float32") == sum(4 * t.numel() for t in tensors.values())


def test_bfloat16_keeps_8_bits_of_mantissa(tensors):
    got = roundtrip(tensors, "bfloat16")
    for key, value in tensors.items():
        assert got[key].dtype == torch.float32
        assert (got[key] - value).abs().le(value.abs() * 2**-8).all(), key
    assert wire_bytes(tensors, "bfloat16") == sum(2 * t.numel() for t in tensors.values())


def test_int8_error_is_at_most_half_a_step_of_the_tensor_scale(tensors):
    got = roundtrip(tensors, "int8")
    for key, value in tensors.items():
        step = value.abs().max() / 127
        assert (got[key] - value).abs().max() <= step / 2 + 1e-12, key
        assert got[key].abs().max() == pytest.approx(float(value.abs().max()), rel=1e-6)
    assert got["adapter.q.router"].eq(0).all()  # an all-zero tensor stays zero
    # small tensors keep their own scale: B's error is relative to B, not to A
    assert (got["adapter.q.lora_B"] - tensors["adapter.q.lora_B"]).abs().max() < 1e-4
    values = sum(t.numel() for t in tensors.values())
    assert wire_bytes(tensors, "int8") == values + 4 * len(tensors)  # one scale per tensor


def test_int8_payload_and_scale():
    encoded = encode(torch.tensor([-2.0, 0.5, 1.0]), "int8")
    assert encoded.payload.dtype == torch.int8 and encoded.scale == pytest.approx(2 / 127)
    assert encoded.payload.tolist() == [-127, 32, 64]
    assert decode(encoded).tolist() == pytest.approx([-2.0, 32 * 2 / 127, 64 * 2 / 127])


def test_an_unknown_precision_is_refused(tensors):
    with pytest.raises(ConfigError, match="federation.transport_precision = 'fp8': expected one "
                       "of float32, bfloat16, int8"):
        wire_bytes(tensors, "fp8")
