"""Flower's records send a message's tensors in the transport precision (algorithms/wire.py)."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from fedlease.algorithms.messages import MalformedReply, Reply  # noqa: E402
from fedlease.algorithms.wire import roundtrip  # noqa: E402
from fedlease.transports.flower.records import read_reply, reply_content  # noqa: E402

TENSORS = {"adapter.q.lora_A": torch.linspace(-1, 1, 12).reshape(1, 3, 4),
           "adapter.q.lora_B": torch.linspace(0, 0.01, 8).reshape(1, 4, 2)}


@pytest.mark.parametrize("precision, dtype, itemsize", [
    ("float32", np.float32, 4), ("bfloat16", np.int16, 2), ("int8", np.int8, 1)])
def test_the_payload_travels_in_the_transport_precision(precision, dtype, itemsize):
    content = reply_content(Reply(dict(TENSORS), 3), precision)
    arrays = {key: array.numpy() for key, array in content["arrays"].items()}
    assert all(a.dtype == dtype for a in arrays.values())
    assert sum(a.nbytes for a in arrays.values()) == itemsize * 20
    reply = read_reply(content)
    expected = roundtrip(TENSORS, precision)
    assert all(reply.arrays[k].dtype == torch.float32 and reply.arrays[k].equal(expected[k])
               for k in TENSORS)


def test_an_int8_tensor_without_its_scale_is_a_malformed_reply():
    content = reply_content(Reply(dict(TENSORS), 3), "int8")
    content["encoding"]["scales"] = json.dumps({})
    reply = read_reply(content)
    assert isinstance(reply, MalformedReply) and "without its scale" in reply.reason


def test_a_payload_of_another_precision_is_a_malformed_reply():
    content = reply_content(Reply(dict(TENSORS), 3), "float32")
    content["encoding"]["precision"] = "int8"
    reply = read_reply(content)
    assert isinstance(reply, MalformedReply) and "expected int8" in reply.reason
