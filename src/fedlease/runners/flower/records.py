"""The library's messages as Flower records: tensors as ``ArrayRecord`` (NumPy ``.npy`` bytes,
never pickles), the instruction config as one JSON string in a ``ConfigRecord`` (a
``ConfigRecord`` holds no nested dicts or None), metrics as a ``MetricRecord``."""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedlease.algorithms.base import Instruction, Reply, Tensors

NUM_EXAMPLES = "num-examples"


def to_array_record(tensors: Tensors) -> ArrayRecord:
    return ArrayRecord({key: Array.from_numpy_ndarray(t.detach().cpu().contiguous().numpy())
                        for key, t in tensors.items()})


def from_array_record(record: ArrayRecord) -> Tensors:
    # np.load gives read-only arrays; the copy makes them ordinary writable tensors
    return {key: torch.from_numpy(np.array(array.numpy())) for key, array in record.items()}


def instruction_content(client_id: str, ins: Instruction) -> RecordDict:
    return RecordDict({
        "arrays": to_array_record(ins.arrays),
        "config": ConfigRecord({"client-id": client_id, "instruction": json.dumps(ins.config)}),
    })


def read_instruction(content: RecordDict) -> tuple[str, Instruction]:
    config = content["config"]
    return (str(config["client-id"]),
            Instruction(from_array_record(content["arrays"]),
                        json.loads(str(config["instruction"]))))


def metric_record(metrics: dict, num_examples: int) -> MetricRecord:
    bad = {k: v for k, v in metrics.items()
           if isinstance(v, bool) or not isinstance(v, (int, float))}
    if bad:
        raise TypeError(f"metrics {sorted(bad)} are not numbers; a MetricRecord holds numbers")
    return MetricRecord({**metrics, NUM_EXAMPLES: num_examples})


def reply_content(reply: Reply) -> RecordDict:
    return RecordDict({"arrays": to_array_record(reply.arrays),
                       "metrics": metric_record(reply.metrics, reply.num_examples)})


def read_reply(content: RecordDict) -> Reply:
    metrics = dict(content["metrics"])
    num_examples = int(metrics.pop(NUM_EXAMPLES))
    return Reply(from_array_record(content["arrays"]), num_examples, metrics)


def read_metrics(content: RecordDict) -> dict:
    metrics = dict(content["metrics"])
    metrics.pop(NUM_EXAMPLES)
    return metrics
