"""What a run costs in communication: the tensor bytes each client downloads and uploads.

Counted by the engine on what it hands the transport and what comes back, so every algorithm
and every runner is measured the same way: a download is the tensors of an ``Instruction``
sent to a client (train, evaluate and profile messages), an upload the tensors of a
``Reply`` received (rejected ones included: they travelled; of a reply that could not be
read, ``MalformedReply.upload_bytes``, the arrays that arrived). Bytes are the tensor payload
in the run's ``federation.transport_precision`` (4, 2 or 1 byte a value, and an int8 tensor's
scale; ``algorithms.wire``); Flower's message framing (``.npy`` headers, the JSON fields) is
not counted. The profile step before round 1 is counted in round 1. Run totals:
``reporting.traffic``.
"""

from __future__ import annotations

from collections import defaultdict

from fedlease.algorithms.messages import MalformedReply
from fedlease.algorithms.wire import wire_bytes


class TrafficMeter:
    """Per client, the bytes sent and received since the last ``round_total``."""

    def __init__(self, precision: str = "float32"):
        self.precision = precision
        self._down: dict[str, int] = defaultdict(int)
        self._up: dict[str, int] = defaultdict(int)

    def sent(self, instructions: dict, replies: dict) -> None:
        """``instructions`` went down to their clients; ``replies`` (``Reply``, or metrics
        without tensors) came back."""
        for cid, ins in instructions.items():
            self._down[cid] += wire_bytes(ins.arrays, self.precision)
        for cid, reply in replies.items():
            self._up[cid] += (reply.upload_bytes if isinstance(reply, MalformedReply)
                              else wire_bytes(getattr(reply, "arrays", {}), self.precision))

    def round_total(self) -> dict:
        """The round's traffic (``download``/``upload``: totals; ``clients``: per client
        ``[download, upload]`` of every client that exchanged a message), then reset."""
        ids = sorted(set(self._down) | set(self._up))
        out = {"download": sum(self._down.values()), "upload": sum(self._up.values()),
               "clients": {cid: [self._down[cid], self._up[cid]] for cid in ids}}
        self._down.clear()
        self._up.clear()
        return out
