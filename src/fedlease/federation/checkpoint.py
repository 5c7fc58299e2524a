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

``checkpoint.json`` records the SHA-256 of each tensor file and of its own content; a resume
verifies them, refuses NaN or infinite tensor values, and checks the structure, so a damaged
checkpoint is a ``CheckpointError`` naming the file, never a run that trains on garbage.
"""

from __future__ import annotations

import dataclasses
import hashlib
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

from fedlease.algorithms.base import Algorithm
from fedlease.algorithms.messages import Tensors
from fedlease.config import RunConfig, changed_fields, config_to_dict
from fedlease.config.schema import MACHINE_SETTINGS
from fedlease.errors import CheckpointError
from fedlease.model.adapted import ADAPTER_PREFIX, HEAD_PREFIX
from fedlease.model.lora import adapter_part_shape
from fedlease.reporting.files import atomic_write, atomic_write_bytes
from fedlease.reporting.outputs import CHECKPOINT_DIR

MANIFEST = "checkpoint.json"
FORMAT = 3  # 2: content hashes recorded; 3: data_sha256 named clients_fingerprint
# fields that may differ between the interrupted run and its resumption
RESUMABLE_CHANGES = {("output", "dir"), ("train", "device")} | MACHINE_SETTINGS



@dataclass
class Checkpoint:
    round: int  # the last finished round
    server_state: dict  # state field -> value
    local_states: dict[str, Tensors]  # client id -> local state
    history: list[dict]  # the run's per-round records so far
    rng: dict
    # the transport's ``fingerprint()`` of the clients' data; a resume must find the same. What it
    # covers is the runner's: the simulator's (``data_fingerprint``) hashes every example, Flower's
    # (``ClientRoster.fingerprint``) the ids, sizes and label counts the nodes report
    clients_fingerprint: str = ""
    runner: dict = dataclasses.field(default_factory=dict)  # the engine's and transport's state


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


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_digest(body: dict) -> str:
    """The hash of the manifest's content, independent of how the JSON is spaced."""
    return sha256(json.dumps(body, sort_keys=True).encode("utf-8"))


def save_checkpoint(out_dir: str | Path, checkpoint: Checkpoint, config: RunConfig) -> None:
    folder = checkpoint_dir(out_dir)
    folder.mkdir(exist_ok=True)
    server_tensors: Tensors = {}
    plain = _encode({"server": checkpoint.server_state, "rng": checkpoint.rng,
                     "runner": checkpoint.runner}, server_tensors, "state")
    client_ids = sorted(checkpoint.local_states)
    client_tensors = {f"{i}/{key}": value.detach().cpu().clone(
                          memory_format=torch.contiguous_format)
                      for i, cid in enumerate(client_ids)
                      for key, value in checkpoint.local_states[cid].items()}
    files = {"server": f"server-{checkpoint.round:05d}.safetensors",
             "clients": f"clients-{checkpoint.round:05d}.safetensors"}
    hashes = {}
    for part, tensors in (("server", server_tensors), ("clients", client_tensors)):
        data = save_tensors(tensors)
        hashes[part] = sha256(data)
        atomic_write_bytes(folder / files[part], data)
    body = {"format": FORMAT, "round": checkpoint.round, "files": files, "sha256": hashes,
            "clients": client_ids, "state": plain, "history": checkpoint.history,
            "config": config_to_dict(config), "clients_fingerprint": checkpoint.clients_fingerprint}
    body = json.loads(json.dumps(body))  # the digest is of what a load reads back
    atomic_write(folder / MANIFEST, json.dumps({**body, "manifest_sha256": _manifest_digest(body)}))
    for old in folder.glob("*.safetensors"):
        if old.name not in files.values():
            old.unlink()


def load_checkpoint(out_dir: str | Path, config: RunConfig) -> Checkpoint:
    """The last complete checkpoint in ``out_dir``; it must come from the same configuration
    (up to ``RESUMABLE_CHANGES``), be intact (hashes) and hold finite values only."""
    folder = checkpoint_dir(out_dir)
    path = folder / MANIFEST
    if not path.exists():
        raise CheckpointError(f"{out_dir}: no checkpoint ({path} is missing); the run was "
                              "killed before its first round ended, or never started: run it "
                              "again without --resume")
    manifest = _read_manifest(path)
    changed = changed_fields(manifest["config"], config_to_dict(config), RESUMABLE_CHANGES)
    if changed:
        raise CheckpointError(f"{out_dir}: the configuration differs from the checkpoint's in "
                              f"{changed}; a run resumes only with the configuration it began with")
    server_tensors, client_tensors = (
        _read_tensors(folder / manifest["files"][part], manifest["sha256"][part])
        for part in ("server", "clients"))
    try:
        plain = _decode(manifest["state"], server_tensors)
        server_state, rng, runner = plain["server"], plain["rng"], plain.get("runner", {})
        if not all(isinstance(part, dict) for part in (server_state, rng, runner)):
            raise TypeError("the server, RNG and runner states must be dicts")
        for key in ("python", "numpy", "torch"):
            rng[key]  # noqa: B018 (a KeyError here names the missing RNG state)
        local_states: dict[str, Tensors] = {cid: {} for cid in manifest["clients"]}
        for name, value in client_tensors.items():
            index, _, key = name.partition("/")
            local_states[manifest["clients"][int(index)]][key] = value
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint: its state does not match "
                              f"{manifest['files']['server']} / {manifest['files']['clients']} "
                              f"({type(err).__name__}: {err})") from None
    _check_finite(folder / manifest["files"]["server"], server_tensors)
    for cid, state in local_states.items():
        _check_finite(folder / manifest["files"]["clients"], state, f"client {cid!r}: ")
    return Checkpoint(manifest["round"], server_state, local_states, manifest["history"], rng,
                      manifest["clients_fingerprint"], runner)


def data_fingerprint(clients) -> str:
    """SHA-256 of every client's id, task and examples (dataclasses), in order."""
    digest = hashlib.sha256()
    for client in clients:
        for part in (client.client_id, client.task, client.train, client.test):
            value = [dataclasses.astuple(ex) for ex in part] if isinstance(part, list) else part
            digest.update(json.dumps(value).encode("utf-8") + b"\n")
    return digest.hexdigest()


def check_fits_model(checkpoint: Checkpoint, model, rank: int, where: Path) -> None:
    """Every adapter tensor of the checkpoint (server state and client states) has the shape
    the model's adapted layers need (``lora_A [E, rank, d_in]``, ``lora_B [E, d_out, rank]``,
    ``router [slots, d_in]``), every client state that holds adapters holds both LoRA parts of
    every layer, and heads read the model's hidden size: a checkpoint of another model or
    rank is refused here, not with a shape error in the middle of a round."""
    shapes = model.adapter_shapes()
    hidden = getattr(model, "hidden_size", None)

    def fail(label: str, problem: str):
        raise CheckpointError(f"{where}: {label}: {problem}; the checkpoint does not fit the "
                              "model (model.path changed since it was saved?)")

    def check(label: str, key: str, value: torch.Tensor) -> None:
        layer, _, part = key[len(ADAPTER_PREFIX):].rpartition(".")
        if layer not in shapes:
            fail(label, f"{key} names a layer the model does not adapt")
        d_in, d_out = shapes[layer]
        # any number of experts (router slots): the other axes by the model's layer and rank
        expected = adapter_part_shape(part, d_in, d_out, rank, value.shape[0] if value.dim() else 0)
        if expected is None or value.dim() != len(expected) or \
                tuple(value.shape[1:]) != expected[1:]:
            fail(label, f"{key} has shape {tuple(value.shape)}")

    def visit(value, label: str) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and key.startswith(ADAPTER_PREFIX):
                    if not isinstance(item, torch.Tensor):
                        fail(label, f"{key} is a {type(item).__name__}, not a tensor")
                    check(label, key, item)
                else:
                    visit(item, f"{label}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{label}[{i}]")

    visit(checkpoint.server_state, "server state")
    for cid, state in checkpoint.local_states.items():
        label = f"client {cid!r}"
        visit(state, label)
        if any(key.startswith(ADAPTER_PREFIX) for key in state):
            missing = [f"{ADAPTER_PREFIX}{layer}.{part}" for layer in shapes
                       for part in ("lora_A", "lora_B")
                       if f"{ADAPTER_PREFIX}{layer}.{part}" not in state]
            if missing:
                fail(label, f"lacks {missing[:3]}" + (" ..." if len(missing) > 3 else ""))
        weight, bias = state.get(HEAD_PREFIX + "weight"), state.get(HEAD_PREFIX + "bias")
        if weight is not None and (hidden is not None and (weight.dim() != 2
                                                           or weight.shape[1] != hidden)
                                   or bias is None or tuple(bias.shape) != weight.shape[:1]):
            fail(label, f"head of shape {tuple(weight.shape)} / "
                        f"{None if bias is None else tuple(bias.shape)}, expected "
                        f"[labels, {hidden}] / [labels]")


# what a manifest must hold, and the type of each entry
MANIFEST_FIELDS = {"format": int, "round": int, "files": dict, "sha256": dict, "clients": list,
                   "state": dict, "history": list, "config": dict, "clients_fingerprint": str,
                   "manifest_sha256": str}


def _read_manifest(path: Path) -> dict:
    """``checkpoint.json``, checked: readable, complete, well typed, its hash matching."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint: not readable JSON ({err})") \
            from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: damaged checkpoint: expected a JSON object")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {manifest.get('format')!r}, expected "
                              f"{FORMAT} (written by another fedlease version); run it again "
                              "without --resume")
    problems = [f"{key!r} {'missing' if key not in manifest else 'is not a ' + kind.__name__}"
                for key, kind in MANIFEST_FIELDS.items()
                if not isinstance(manifest.get(key), kind) or isinstance(manifest[key], bool)]
    for key in ("files", "sha256"):
        if isinstance(manifest.get(key), dict) and not all(
                isinstance(manifest[key].get(part), str) for part in ("server", "clients")):
            problems.append(f"{key!r} lacks the server or clients entry")
    if problems:
        raise CheckpointError(f"{path}: damaged checkpoint: {', '.join(problems)}")
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if _manifest_digest(body) != manifest["manifest_sha256"]:
        raise CheckpointError(f"{path}: damaged checkpoint: its content does not match its "
                              "SHA-256 (the file was changed or corrupted after it was saved)")
    if any(Path(name).name != name for name in manifest["files"].values()):
        raise CheckpointError(f"{path}: damaged checkpoint: file names {manifest['files']} "
                              "must name files in the checkpoint folder")
    if not all(isinstance(cid, str) for cid in manifest["clients"]):
        raise CheckpointError(f"{path}: damaged checkpoint: 'clients' must list client ids")
    return manifest


def _read_tensors(path: Path, expected_sha256: str) -> Tensors:
    """A tensor file of the checkpoint, verified against its recorded SHA-256 and finite."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: damaged checkpoint: cannot read it "
                              f"({err.strerror or err})") from None
    if sha256(data) != expected_sha256:
        raise CheckpointError(f"{path}: damaged checkpoint: its content does not match the "
                              f"SHA-256 recorded in {MANIFEST} (truncated, or changed after it "
                              "was saved)")
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint: not a safetensors file ({err})") \
            from None
    return tensors


def _check_finite(path: Path, tensors: Tensors, owner: str = "") -> None:
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: {owner}tensor {name!r} holds NaN or infinite values; "
                                  "a run does not resume from them (the training diverged: "
                                  "start again, e.g. with a lower train.lr)")
