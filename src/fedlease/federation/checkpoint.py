"""Checkpoints: what a run needs to continue after it was killed, saved after every round.

::

    OUT/checkpoint/checkpoint.json             round, history, config, the plain server state,
                                               the file of each client's state
    OUT/checkpoint/server-<hash>.safetensors   the tensors of one server state field (RNG
                                               states, runner state: one file each), named by
                                               their content: rewritten only when they change
    OUT/checkpoint/client-<n>-<round>.safetensors  client n's local state, as of the round it
                                               last changed

The server state is the algorithm's ``state_fields``: tensors, numpy arrays, numbers, strings,
lists, tuples, dicts and fedlease dataclasses of those. Tensors (and numpy arrays) go to the
safetensors file, the rest to JSON; nothing is pickled. The tensor files of a round are written
first, ``checkpoint.json`` naming them is swapped in last (temp file, fsync, rename), and only
then are the previous round's files removed: a run killed at any moment leaves one complete
checkpoint.

A client's state file is written only in a round that changed it (the clients that trained),
and a server field's only when its content changed (FedLEASE's N embeddings: once), so a
round's checkpoint writes what changed, not every client's state; a load reads and verifies
the states one at a time and hands them out on demand (``SavedClientStates``): neither holds all
N states in memory at once.

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
from collections.abc import Collection, Iterator, Mapping
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
# 2: content hashes recorded; 3: data_sha256 named clients_fingerprint; 4: a file per client
# state and per server field
FORMAT = 4
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
    # client id -> [file, SHA-256] of its state in the checkpoint folder (what a load found;
    # the next save keeps the files of the clients whose state did not change)
    client_files: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def client_file(index: int, rnd: int) -> str:
    """The file of the ``index``-th client's (sorted ids) state as of round ``rnd``."""
    return f"client-{index:06d}-{rnd:05d}.safetensors"


class SavedClientStates(Mapping):
    """A checkpoint's client states, each read from its file (and verified) when asked for."""

    def __init__(self, folder: Path, files: dict[str, list[str]]):
        self.folder, self.files = folder, files

    def __getitem__(self, client_id: str) -> Tensors:
        name, digest = self.files[client_id]
        path = self.folder / name
        state = _read_tensors(path, digest)
        _check_finite(path, state, f"client {client_id!r}: ")
        return state

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


# -- plain encoding of the server state ---------------------------------------------------

# a dict of at least this many same-shaped tensors under string keys (FedLEASE's per-client
# embeddings) is stored as one stacked tensor and its keys: one safetensors entry, not N
STACKED_DICT_MIN = 64


def _stackable(value: dict) -> bool:
    if len(value) < STACKED_DICT_MIN:
        return False
    first = next(iter(value.values()))
    return isinstance(first, torch.Tensor) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.shape == first.shape
        and v.dtype == first.dtype for k, v in value.items())


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
    if isinstance(value, dict) and _stackable(value):
        tensors[path] = torch.stack([v.detach().cpu() for v in value.values()])
        return {"__stacked__": path, "keys": list(value)}
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
    if "__stacked__" in value:
        stacked = tensors[value["__stacked__"]]
        if len(value["keys"]) != len(stacked):
            raise ValueError(f"{len(value['keys'])} keys for {len(stacked)} stacked tensors")
        return dict(zip(value["keys"], stacked.clone().unbind(0), strict=True))
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


def save_checkpoint(out_dir: str | Path, checkpoint: Checkpoint, config: RunConfig,
                    changed: Collection[str] | None = None) -> dict[str, list[str]]:
    """Save ``checkpoint``; of the client states, only those of ``changed`` (None: all) are
    written, the others keep their files of ``checkpoint.client_files``. Returns the client files
    of the saved checkpoint (the next round's ``client_files``)."""
    folder = checkpoint_dir(out_dir)
    folder.mkdir(exist_ok=True)
    server_tensors: Tensors = {}
    plain = _encode({"server": checkpoint.server_state, "rng": checkpoint.rng,
                     "runner": checkpoint.runner}, server_tensors, "state")
    server_files = []
    for group in _by_field(server_tensors):
        data = save_tensors(group)
        digest = sha256(data)
        name = f"server-{digest[:24]}.safetensors"
        if not (folder / name).exists():  # the same content as a file already there
            atomic_write_bytes(folder / name, data)
        server_files.append([name, digest])
    index = {cid: i for i, cid in enumerate(sorted(checkpoint.local_states))}
    client_files = dict(checkpoint.client_files)
    for cid in checkpoint.local_states if changed is None else changed:
        state = checkpoint.local_states.get(cid)  # none: held by a Flower node
        if not state:
            client_files.pop(cid, None)
            continue
        data = save_tensors({k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                             for k, v in state.items()})
        name = client_file(index[cid], checkpoint.round)
        atomic_write_bytes(folder / name, data)
        client_files[cid] = [name, sha256(data)]
    body = {"format": FORMAT, "round": checkpoint.round, "server": server_files,
            "clients": client_files, "state": plain,
            "history": checkpoint.history, "config": config_to_dict(config),
            "clients_fingerprint": checkpoint.clients_fingerprint}
    body = json.loads(json.dumps(body))  # the digest is of what a load reads back
    atomic_write(folder / MANIFEST, json.dumps({**body, "manifest_sha256": _manifest_digest(body)}))
    kept = {name for name, _ in [*server_files, *client_files.values()]}
    for old in folder.glob("*.safetensors"):  # superseded, or left by a save that was killed
        if old.name not in kept:
            old.unlink()
    return client_files


def _by_field(tensors: Tensors) -> list[Tensors]:
    """The server tensors grouped by what they belong to: each field of the server state
    (paths ``state.0.<i>...``), the RNG states, the runner state."""
    groups: dict[str, Tensors] = {}
    for path, value in tensors.items():
        parts = path.split(".")
        groups.setdefault(".".join(parts[:3] if parts[1] == "0" else parts[:2]), {})[path] = value
    return list(groups.values())


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
    server_tensors: Tensors = {}
    for name, digest in manifest["server"]:
        tensors = _read_tensors(folder / name, digest)
        _check_finite(folder / name, tensors)
        server_tensors.update(tensors)
    try:
        plain = _decode(manifest["state"], server_tensors)
        server_state, rng, runner = plain["server"], plain["rng"], plain.get("runner", {})
        if not all(isinstance(part, dict) for part in (server_state, rng, runner)):
            raise TypeError("the server, RNG and runner states must be dicts")
        for key in ("python", "numpy", "torch"):
            rng[key]  # noqa: B018 (a KeyError here names the missing RNG state)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint: its state does not match its "
                              f"server files ({type(err).__name__}: {err})") from None
    local_states = SavedClientStates(folder, manifest["clients"])
    for cid in local_states:  # verified now, one at a time: a damaged file never trains
        local_states[cid]  # noqa: B018
    return Checkpoint(manifest["round"], server_state, local_states, manifest["history"], rng,
                      manifest["clients_fingerprint"], runner, manifest["clients"])


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
MANIFEST_FIELDS = {"format": int, "round": int, "server": list, "clients": dict,
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
    if problems:
        raise CheckpointError(f"{path}: damaged checkpoint: {', '.join(problems)}")
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if _manifest_digest(body) != manifest["manifest_sha256"]:
        raise CheckpointError(f"{path}: damaged checkpoint: its content does not match its "
                              "SHA-256 (the file was changed or corrupted after it was saved)")
    entries = [*manifest["server"], *manifest["clients"].values()]
    if not all(isinstance(entry, list) and len(entry) == 2
               and all(isinstance(part, str) for part in entry) for entry in entries):
        raise CheckpointError(f"{path}: damaged checkpoint: 'server' must list, and 'clients' "
                              "map each client id to, [file, SHA-256] pairs")
    names = [name for name, _ in entries]
    if any(Path(name).name != name or not name for name in names):
        raise CheckpointError(f"{path}: damaged checkpoint: file names {names[:3]} ... must "
                              "name files in the checkpoint folder")
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
