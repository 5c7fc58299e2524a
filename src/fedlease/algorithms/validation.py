"""The server's check of every client upload before it is aggregated.

A client is not trusted: whatever it sends is compared with what the server asked for in the
round's ``Instruction`` (its ``upload`` spec, see ``select_upload``) and with the adapter shapes
the server knows. A reply that fails any check is left out of the round and logged with the
client id and the reason; the other replies are aggregated as usual, so a bad upload never
touches the server's state.

Every runner calls ``accept_replies`` between collecting the replies and ``aggregate_fit`` (and
``aggregate_profile``: a representation vector is checked like any tensor).
"""

from __future__ import annotations

import logging
import math
import numbers

import torch

from fedlease.algorithms.base import Algorithm
from fedlease.algorithms.messages import (
    EMBEDDING_KEY,
    Instruction,
    MalformedReply,
    Reply,
    read_fields,
)
from fedlease.errors import ProtocolError, RejectedUpload
from fedlease.model.adapted import ADAPTER_PREFIX
from fedlease.model.lora import adapter_part_shape

log = logging.getLogger(__name__)

# a sample count no honest client of this library reaches; bounds a weight in the FedAvg means
MAX_NUM_EXAMPLES = 10**9




def expected_upload_shapes(instruction: Instruction, adapter_shapes: dict[str, tuple[int, int]],
                           rank: int, representation_dim: int = 0) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor the client was asked to upload."""
    spec, layout = instruction.upload, instruction.layout
    if spec is None:
        return {}
    shapes = {}
    if spec.embedding:
        shapes[EMBEDDING_KEY] = (representation_dim,)
    if layout is None:  # a profile request: the embedding alone
        return shapes
    # a router is uploaded whole (its slots); LoRA parts for the experts asked for
    counts = {"lora_A": len(spec.experts), "lora_B": len(spec.experts)}
    if layout.router_slots is not None:
        counts["router"] = len(layout.router_slots)
    for name, (d_in, d_out) in adapter_shapes.items():
        for part in spec.parts:
            if part in counts:
                shapes[f"{ADAPTER_PREFIX}{name}.{part}"] = adapter_part_shape(
                    part, d_in, d_out, rank, counts[part])
    return shapes


def check_reply(reply: Reply, expected: dict[str, tuple[int, ...]], max_norm: float,
                declared_examples: int = 0) -> None:
    """Raise ``RejectedUpload`` unless ``reply`` holds exactly the ``expected`` tensors (float32,
    finite, L2 norm <= ``max_norm`` each), a sane sample count (equal to ``declared_examples``
    when the server knows it) and numeric metrics."""
    if isinstance(reply, MalformedReply):
        raise RejectedUpload(f"malformed reply: {reply.reason}")
    if not isinstance(reply, Reply):
        raise RejectedUpload(f"expected a Reply, got {type(reply).__name__}")
    arrays = reply.arrays
    if not isinstance(arrays, dict):
        raise RejectedUpload(f"arrays must be a dict of tensors, got {type(arrays).__name__}")
    missing, unexpected = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or unexpected:
        raise RejectedUpload(f"wrong tensors: missing {_few(missing)}, "
                             f"unexpected {_few(unexpected)}")
    for key, shape in expected.items():
        value = arrays[key]
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise RejectedUpload(f"{key}: expected a dense tensor, got {type(value).__name__}")
        if value.dtype != torch.float32:
            raise RejectedUpload(f"{key}: dtype {value.dtype}, expected torch.float32")
        if tuple(value.shape) != shape:
            raise RejectedUpload(f"{key}: shape {tuple(value.shape)}, expected {shape}")
        if not bool(torch.isfinite(value).all()):
            raise RejectedUpload(f"{key}: holds NaN or infinite values")
        norm = float(torch.linalg.vector_norm(value))
        if norm > max_norm:
            raise RejectedUpload(f"{key}: L2 norm {norm:.4g} exceeds federation.max_update_norm "
                                 f"= {max_norm:g}")
    n = reply.num_examples
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) \
            or not 1 <= n <= MAX_NUM_EXAMPLES:
        raise RejectedUpload(f"num_examples = {n!r}: expected an integer in 1..{MAX_NUM_EXAMPLES}")
    if declared_examples and n != declared_examples:
        raise RejectedUpload(f"num_examples = {n}, but the client declared {declared_examples}")
    if not isinstance(reply.metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, numbers.Real) and math.isfinite(v)
            for k, v in reply.metrics.items()):
        raise RejectedUpload("metrics must map names to finite numbers")


def _few(keys: list[str]) -> str:
    return str(keys) if len(keys) <= 3 else f"{keys[:3]} and {len(keys) - 3} more"


def accept_replies(algorithm: Algorithm, rnd: int, instructions: dict[str, Instruction],
                   replies: dict[str, Reply]) -> tuple[dict[str, Reply], dict[str, str]]:
    """Split a round's replies into those to aggregate and the rejected ones (client -> reason).

    ``instructions`` are what ``configure_fit(rnd)`` sent; a reply from a client that got no
    instruction is rejected too. Rejections are logged as warnings.
    """
    declared = {c.client_id: c.num_examples for c in algorithm.clients}
    max_norm = algorithm.config.federation.max_update_norm
    accepted, rejected = {}, {}
    for cid, reply in replies.items():
        try:
            if cid not in instructions:
                raise RejectedUpload("this client was not asked to train in this round")
            expected = expected_upload_shapes(instructions[cid], algorithm.adapter_shapes,
                                              algorithm.config.lora.rank,
                                              algorithm.representation_dim)
            check_reply(reply, expected, max_norm, declared.get(cid, 0))
            try:
                reply.extra = read_fields(algorithm.reply_fields, reply.extra, "reply")
            except ProtocolError as err:
                raise RejectedUpload(str(err)) from None
            algorithm.check_reply_fields(instructions[cid], reply)
        except RejectedUpload as err:
            rejected[cid] = str(err)
            log.warning("round %d: rejected the upload of client %r: %s", rnd, cid, err)
        else:
            accepted[cid] = reply
    return accepted, rejected
