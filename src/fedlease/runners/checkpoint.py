"""Checkpoints: what a run needs to continue after it was killed, saved after every round.

::

    OUT/checkpoint/checkpoint.json             round, history, config, the plain server state
    OUT/checkpoint/server-<round>.safetensors  the tensors of the server state and RNG states
    OUT/checkpoint/clients-<round>.safetensors every client's local state

The server state is the algorithm's ``state_fields``: tensors, numpy arrays, numbers, strings,
lists, tuples, dicts and fedlease dataclasses of those. Tensors (and numpy arrays) go to the
safetensors file, the rest to JSON; nothing is pickled. The tensor files of a round are written
first, ``checkpoint.json`` naming them is swapped in last (temp file, fsync, rename), and only
then are the previous round's files removed: a run killed at any moment leaves one complete
checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from fedlease.algorithms.base import Algorithm, Tensors
from fedlease.config import RunConfig, config_to_dict
from fedlease.reporting.outputs import atomic_write, atomic_write_bytes

CHECKPOINT_DIR = "checkpoint"
MANIFEST = "checkpoint.json"
# fields that may differ between the interrupted run and its resumption
RESUMABLE_CHANGES = {("output", "dir"), ("train", "device")}


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or does not belong to this run's configuration."""


@dataclass
class Checkpoint:
    round: int  # the last finished round
    server_state: dict  # state field -> value
    local_states: dict[str, Tensors]  # client id -> local state
    history: list[dict]  # the run's per-round records so far
    rng: dict


# -- plain encoding of the server state ---------------------------------------------------

def _encode(value, tensors: Tensors, path: str):
    """JSON-able form of ``value``; tensors and arrays are moved into ``tensors`` by path."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().clone(memory_format=torch.contiguous_format)
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(value)).clone()
        return {"__ndarray__": path}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(value, f.name), tensors, f"{path}.{f.name}")
                           for f in dataclasses.fields(value)}}
    if isinstance(value, dict):  # as pairs: keeps non-string keys (e.g. k -> silhouette) intact
        return {"__dict__": [[_encode(k, tensors, f"{path}.{i}k"),
                              _encode(v, tensors, f"{path}.{i}")]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    raise TypeError(f"{path}: cannot checkpoint a {type(value).__name__}")


def _decode(value, tensors: Tensors):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy()
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__dict__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__dict__"]}
    if "__dataclass__" in value:
        cls = _fedlease_dataclass(value["__dataclass__"])
        return cls(**{k: _decode(v, tensors) for k, v in value["fields"].items()})
    raise CheckpointError(f"unknown entry in the checkpoint: {sorted(value)}")


def _fedlease_dataclass(name: str) -> type:
    """Only dataclasses of this package are rebuilt from a checkpoint, never arbitrary objects."""
    module, _, qualname = name.partition(":")
    if module != "fedlease" and not module.startswith("fedlease."):
        raise CheckpointError(f"checkpoint names {name!r}, not a fedlease dataclass")
    cls = getattr(importlib.import_module(module), qualname, None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise CheckpointError(f"checkpoint names {name!r}, not a fedlease dataclass")
    return cls


def algorithm_state(algorithm: Algorithm) -> dict:
    return {name: getattr(algorithm, name) for name in algorithm.state_fields}


def restore_algorithm_state(algorithm: Algorithm, state: dict) -> None:
    if set(state) != set(algorithm.state_fields):
        raise CheckpointError(f"checkpoint holds server state {sorted(state)}, algorithm "
                              f"{algorithm.name!r} expects {sorted(algorithm.state_fields)}")
    for name, value in state.items():
        setattr(algorithm, name, value)


def rng_state() -> dict:
    """Global RNG states (each client round also seeds torch itself, see ``client_seed``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


# -- save / load -------------------------------------------------------------------------

def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def save_checkpoint(out_dir: str | Path, checkpoint: Checkpoint, config: RunConfig) -> None:
    folder = checkpoint_dir(out_dir)
    folder.mkdir(exist_ok=True)
    server_tensors: Tensors = {}
    plain = _encode({"server": checkpoint.server_state, "rng": checkpoint.rng},
                    server_tensors, "state")
    client_ids = sorted(checkpoint.local_states)
    client_tensors = {f"{i}/{key}": value.detach().cpu().clone(
                          memory_format=torch.contiguous_format)
                      for i, cid in enumerate(client_ids)
                      for key, value in checkpoint.local_states[cid].items()}
    files = {"server": f"server-{checkpoint.round:05d}.safetensors",
             "clients": f"clients-{checkpoint.round:05d}.safetensors"}
    atomic_write_bytes(folder / files["server"], save_tensors(server_tensors))
    atomic_write_bytes(folder / files["clients"], save_tensors(client_tensors))
    manifest = {"round": checkpoint.round, "files": files, "clients": client_ids,
                "state": plain, "history": checkpoint.history, "config": config_to_dict(config)}
    atomic_write(folder / MANIFEST, json.dumps(manifest))
    for old in folder.glob("*.safetensors"):
        if old.name not in files.values():
            old.unlink()


def load_checkpoint(out_dir: str | Path, config: RunConfig) -> Checkpoint:
    """The last complete checkpoint in ``out_dir``; it must come from the same configuration
    (up to ``RESUMABLE_CHANGES``)."""
    folder = checkpoint_dir(out_dir)
    path = folder / MANIFEST
    if not path.exists():
        raise CheckpointError(f"{out_dir}: no checkpoint ({path} is missing); the run was "
                              "killed before its first round ended, or never started: run it "
                              "again without --resume")
    try:
        manifest = json.loads(path.read_text())
        server_tensors = load_tensors((folder / manifest["files"]["server"]).read_bytes())
        client_tensors = load_tensors((folder / manifest["files"]["clients"]).read_bytes())
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise CheckpointError(f"{folder}: damaged checkpoint ({err})") from None
    saved, current = manifest["config"], config_to_dict(config)
    changed = [f"{section}.{key}" for section, values in current.items()
               for key, value in values.items()
               if (section, key) not in RESUMABLE_CHANGES
               and saved.get(section, {}).get(key) != value]
    if changed:
        raise CheckpointError(f"{out_dir}: the configuration differs from the checkpoint's in "
                              f"{changed}; a run resumes only with the configuration it began with")
    plain = _decode(manifest["state"], server_tensors)
    local_states: dict[str, Tensors] = {cid: {} for cid in manifest["clients"]}
    for name, value in client_tensors.items():
        index, _, key = name.partition("/")
        local_states[manifest["clients"][int(index)]][key] = value
    return Checkpoint(manifest["round"], plain["server"], local_states, manifest["history"],
                      plain["rng"])
