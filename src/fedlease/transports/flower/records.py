"""The library's messages as Flower records: tensors as ``ArrayRecord`` (NumPy ``.npy`` bytes,
never pickles), the rest of an instruction (``Instruction.to_config``) and a reply's algorithm
fields as JSON strings in a ``ConfigRecord`` (which holds no nested dicts or None), metrics as a
``MetricRecord``. A message's tensors travel in ``federation.transport_precision``
(``algorithms.wire``): the ``.npy`` payload is float32, bfloat16 (its bits as int16: NumPy has no
bfloat16) or int8, and the ``encoding`` record names the precision and holds the int8 scales."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedlease.algorithms.messages import Instruction, MalformedReply, Reply, Tensors
from fedlease.algorithms.wire import Encoded, check_precision, decode, encode
from fedlease.errors import ProtocolError

NUM_EXAMPLES = "num-examples"


def to_array_record(tensors: Tensors) -> ArrayRecord:
    return ArrayRecord({key: Array.from_numpy_ndarray(t.detach().cpu().contiguous().numpy())
                        for key, t in tensors.items()})


def from_array_record(record: ArrayRecord) -> Tensors:
    # np.load gives read-only arrays; the copy makes them ordinary writable tensors
    return {key: torch.from_numpy(np.array(array.numpy())) for key, array in record.items()}


# the wire dtype of a payload, per precision (bfloat16 as its int16 bits)
WIRE_DTYPES = {"float32": np.float32, "bfloat16": np.int16, "int8": np.int8}


def encoded_records(tensors: Tensors, precision: str) -> dict:
    """``arrays`` (the payloads) and ``encoding`` (the precision and int8 scales) records of
    ``tensors`` sent in ``precision``."""
    encoded = {key: encode(t, precision) for key, t in tensors.items()}
    payloads = {key: e.payload.view(torch.int16) if precision == "bfloat16" else e.payload
                for key, e in encoded.items()}
    scales = {key: e.scale for key, e in encoded.items()} if precision == "int8" else {}
    return {"arrays": to_array_record(payloads),
            "encoding": ConfigRecord({"precision": precision, "scales": json.dumps(scales)})}


def decoded_arrays(content: RecordDict) -> Tensors:
    """The float32 tensors of a message's ``arrays``, decoded by its ``encoding`` (none:
    float32). ``ProtocolError`` for a payload that is not of the declared precision."""
    encoding = content["encoding"] if "encoding" in content else {"precision": "float32",
                                                                   "scales": "{}"}
    precision = str(encoding["precision"])
    try:
        check_precision(precision)
    except KeyError as err:  # UnknownName: its message names the precisions
        raise ProtocolError(str(err)) from None
    scales = json.loads(str(encoding["scales"]))
    out = {}
    for key, payload in from_array_record(_record(content, "arrays")).items():
        if payload.numpy().dtype != WIRE_DTYPES[precision]:
            raise ProtocolError(f"tensor {key!r}: a {payload.numpy().dtype} payload, expected "
                                f"{np.dtype(WIRE_DTYPES[precision])} for {precision}")
        if precision == "bfloat16":
            payload = payload.view(torch.bfloat16)
        if precision == "int8" and not isinstance(scales.get(key), (int, float)):
            raise ProtocolError(f"tensor {key!r}: int8 without its scale")
        out[key] = decode(Encoded(payload, float(scales.get(key, 1.0))))
    return out


def instruction_content(client_id: str, ins: Instruction,
                        precision: str = "float32") -> RecordDict:
    return RecordDict({
        **encoded_records(ins.arrays, precision),
        "config": ConfigRecord({"client-id": client_id,
                                "instruction": json.dumps(ins.to_config())}),
    })


def read_instruction(content: RecordDict, extra_type: type | None) -> tuple[str, Instruction]:
    """``extra_type``: the algorithm's ``instruction_fields``."""
    config = content["config"]
    return (str(config["client-id"]),
            Instruction.from_config(decoded_arrays(content),
                                    json.loads(str(config["instruction"])), extra_type))


def metric_record(metrics: dict, num_examples: int) -> MetricRecord:
    bad = {k: v for k, v in metrics.items()
           if isinstance(v, bool) or not isinstance(v, (int, float))}
    if bad:
        raise TypeError(f"metrics {sorted(bad)} are not numbers; a MetricRecord holds numbers")
    return MetricRecord({**metrics, NUM_EXAMPLES: num_examples})


def reply_content(reply: Reply, precision: str = "float32") -> RecordDict:
    extra = None if reply.extra is None else dataclasses.asdict(reply.extra)
    return RecordDict({**encoded_records(reply.arrays, precision),
                       "metrics": metric_record(reply.metrics, reply.num_examples),
                       "extra": ConfigRecord({"fields": json.dumps(extra)})})


def read_reply(content: RecordDict) -> Reply | MalformedReply:
    """The reply as it arrived; its ``extra`` stays the wire dict until the server's
    validation reads it (``accept_replies``), so a malformed one is a rejected upload. A reply
    that cannot be read at all (a record missing, arrays that are not ``.npy``, extra fields
    that are not JSON) is a ``MalformedReply``, rejected there too; its example count is kept
    as sent, so a non-integer one is rejected rather than rounded."""
    try:
        metrics = dict(_record(content, "metrics"))
        if NUM_EXAMPLES not in metrics:
            raise ProtocolError(f"the metrics record has no {NUM_EXAMPLES!r}")
        num_examples = metrics.pop(NUM_EXAMPLES)
        extra = json.loads(str(_record(content, "extra")["fields"])) \
            if "extra" in content else None
        return Reply(decoded_arrays(content), num_examples, metrics, extra)
    except ProtocolError as err:
        return MalformedReply(str(err), arrived_bytes(content))
    except (KeyError, TypeError, ValueError) as err:  # json, .npy and record decoding
        return MalformedReply(f"{type(err).__name__}: {err}", arrived_bytes(content))


def arrived_bytes(content: RecordDict) -> int:
    """The tensor payload of a reply's ``arrays`` record as declared by each array (elements x
    item size, as ``tensor_bytes`` counts a readable one; the .npy framing is not counted),
    whether or not the rest of the reply can be read; 0 without one."""
    try:
        record = content["arrays"]
    except KeyError:
        return 0
    if not isinstance(record, ArrayRecord):
        return 0
    total = 0
    for array in record.values():
        try:
            total += math.prod(array.shape) * np.dtype(array.dtype).itemsize
        except (TypeError, ValueError):
            continue  # an array whose shape or type cannot be read: nothing to count
    return total


@dataclasses.dataclass(frozen=True)
class NodeDescription:
    """A node's answer to the query before round 1 (the ClientApp's ``describe``)."""

    client_id: str
    task: str
    order: int  # its partition: the clients' order, as in the simulator
    federation_size: int
    num_examples: int
    adapter_shapes: str  # JSON, compared as text between the nodes
    representation_dim: int
    data: dict
    has_state: bool


def read_description(content: RecordDict) -> NodeDescription:
    """The node's description; ``ProtocolError`` naming what is missing or malformed."""
    try:
        info = _record(content, "info")
        num_examples = _record(content, "metrics")["num-examples"]
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) \
                or num_examples < 1:
            raise ProtocolError(f"num-examples = {num_examples!r}: expected an integer >= 1")
        data = json.loads(str(info["data"]))
        if not isinstance(data, dict):
            raise ProtocolError(f"data = {data!r}: expected a JSON object")
        return NodeDescription(str(info["client-id"]), str(info["task"]), int(info["order"]),
                               int(info["federation-size"]), num_examples,
                               str(info["adapter-shapes"]), int(info["representation-dim"]),
                               data, bool(info.get("has-state", False)))
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise ProtocolError(f"description: {type(err).__name__}: {err}") from None


def read_metrics(content: RecordDict, required: tuple[str, ...] = ()) -> dict:
    """An evaluate reply's metrics; ``ProtocolError`` if the record or one of the
    ``required`` metrics is missing or not a finite number."""
    metrics = dict(_record(content, "metrics"))
    metrics.pop(NUM_EXAMPLES, None)
    bad = [name for name in required if not isinstance(metrics.get(name), (int, float))
           or isinstance(metrics[name], bool) or not math.isfinite(metrics[name])]
    if bad:
        raise ProtocolError(f"metrics {bad}: expected finite numbers")
    return metrics


def _record(content: RecordDict, name: str):
    if name not in content:
        raise ProtocolError(f"no {name!r} record (it holds {sorted(content)})")
    return content[name]
