"""How the tensors of a message travel: ``federation.transport_precision``.

Every tensor of every message, server to client and back, is sent in one precision:
``float32`` (as held), ``bfloat16`` (2 bytes a value) or ``int8`` with one float32 scale per
tensor (``max |x| / 127``, values rounded to the nearest step: 1 byte a value, as NVFlare's
quantisation filters do). The receiver works on the decoded float32 values (``roundtrip``);
what it keeps of its own (a client's head, its local state) is never encoded. The engine applies
``roundtrip`` to what goes down and what comes up, for both runners, and counts ``wire_bytes``
in the traffic meter; the Flower records send the encoded payload itself
(``runners.flower.records``), so those are the bytes that travel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedlease.registry import Registry

Tensors = dict[str, torch.Tensor]
# federation.transport_precision: the precisions a tensor may travel in, and its bytes a value
TRANSPORT_PRECISIONS: Registry[int] = Registry("federation.transport_precision", {
    "float32": 4, "bfloat16": 2, "int8": 1})
INT8_STEPS = 127  # int8 values in [-127, 127]: symmetric around 0
SCALE_BYTES = 4  # one float32 scale per int8 tensor


@dataclass(frozen=True)
class Encoded:
    """One tensor as it travels: ``payload`` in the transport dtype, and its scale (int8)."""

    payload: torch.Tensor
    scale: float = 1.0


def encode(tensor: torch.Tensor, precision: str) -> Encoded:
    check_precision(precision)
    values = tensor.detach().float()
    if precision == "float32":
        return Encoded(values)
    if precision == "bfloat16":
        return Encoded(values.to(torch.bfloat16))
    largest = float(values.abs().max()) if values.numel() else 0.0
    scale = largest / INT8_STEPS if largest > 0 else 1.0
    steps = torch.round(values / scale).clamp(-INT8_STEPS, INT8_STEPS)
    return Encoded(steps.to(torch.int8), scale)


def decode(encoded: Encoded) -> torch.Tensor:
    """The float32 values the receiver works on."""
    values = encoded.payload.float()
    return values * encoded.scale if encoded.payload.dtype == torch.int8 else values


def roundtrip(tensors: Tensors, precision: str) -> Tensors:
    """``tensors`` as the receiver gets them (float32: unchanged)."""
    if precision == "float32":
        return tensors
    return {key: decode(encode(value, precision)) for key, value in tensors.items()}


def wire_bytes(tensors: Tensors, precision: str) -> int:
    """The bytes ``tensors`` take on the wire in ``precision`` (payload and int8 scales)."""
    per_value = TRANSPORT_PRECISIONS[precision]
    scales = SCALE_BYTES * len(tensors) if precision == "int8" else 0
    return sum(t.numel() for t in tensors.values()) * per_value + scales


def check_precision(precision: str) -> None:
    """``UnknownName`` (a ``ConfigError``) naming the precisions, for one not registered."""
    TRANSPORT_PRECISIONS[precision]  # noqa: B018 (raises for an unknown name)
