"""What a run folder says about the models it holds, and reading one model back from it.

A finished simulator run writes ``OUT/run.json`` next to its adapters
(``reporting.outputs.describe_run``), so that prediction and export need nothing but the folder::

    {"format": "fedlease-run", "version": 1, "algorithm": "fedlease",
     "config": {"model": {...}, "lora": {...}, "train": {...}},   # model.path: the resolved base
     "clients": {"<id>": {"task": "sentiment", "labels": ["negative", "positive"],
                          "layout": {...}, "weights": "adapters/<id>.safetensors",
                          "warmup_weights": "adapters/warmup/<id>.safetensors"}},  # FedLEASE
     "server": {"weights": "adapters/server.safetensors", "num_experts": 4}}   # or null

``labels`` is empty for generation runs. ``fedlease export --format fedlease`` writes the same
description for one client (``fedlease_model.json`` + ``model.safetensors``), so a model also
loads without its run folder. ``SavedModel`` is what either of them holds for one model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors

from fedlease.config import RunConfig
from fedlease.configure import load_config
from fedlease.errors import ConfigError, ModelFileError
from fedlease.model.lora import AdapterLayout
from fedlease.reporting.outputs import (
    FORMAT_VERSION,
    MODEL_SECTIONS,
    RUN_FILE,
    model_config,
)

MODEL_FILE = "fedlease_model.json"
MODEL_WEIGHTS = "model.safetensors"



@dataclass
class SavedModel:
    """One client's model (or one server expert) as written by a run."""

    config: RunConfig  # model.path is the base model the adapters belong to
    algorithm: str
    name: str  # the client id, or "expert-<k>"
    layout: AdapterLayout
    state: dict[str, torch.Tensor]  # adapter.* and, for a classifier, head.*
    task: str = ""  # the client's task name (sentiment, ...)
    labels: list[str] = field(default_factory=list)  # label names by index (classification)


def describe_model(model: SavedModel) -> dict:
    """``fedlease_model.json``'s content: one model, its weights in ``model.safetensors``."""
    return {"format": "fedlease-model", "version": FORMAT_VERSION, "algorithm": model.algorithm,
            "config": model_config(model.config, model.config.model.path),
            "client": {"id": model.name, "task": model.task, "labels": list(model.labels),
                       "layout": model.layout.to_config(), "weights": MODEL_WEIGHTS}}


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: cannot read the {what} ({err})") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: not a {what} of version {FORMAT_VERSION}")
    return data


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_tensors(path.read_bytes())
    except (OSError, SafetensorError) as err:
        raise ModelFileError(f"{path}: cannot read the weights ({err})") from None


def _config(data: dict, where: Path) -> RunConfig:
    try:
        return load_config(overrides={k: data["config"][k] for k in MODEL_SECTIONS})
    except (ConfigError, KeyError, TypeError) as err:
        raise ModelFileError(f"{where}: damaged model description ({err})") from None


def read_run(run_dir: str | Path) -> dict:
    """``run.json`` of a finished run folder."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        hint = (" (an unfinished run, a Flower run whose models stay on the nodes, or a run of "
                "fedlease before 0.1 that did not describe itself)")
        raise ModelFileError(f"{run_dir}: no {RUN_FILE}; expected the folder of a finished "
                             f"`fedlease run`{hint}")
    return _read_json(path, "run description")


def load_saved_model(path: str | Path, client_id: str | None = None, *, expert: int | None = None,
                     warmup: bool = False) -> SavedModel:
    """A client's final model from a run folder (``client_id``; ``warmup``: its FedLEASE
    warm-up LoRA instead), server expert ``expert`` of a run folder, or the model of a
    ``fedlease`` export folder (no client id needed)."""
    try:
        return _load_saved_model(Path(path), client_id, expert, warmup)
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, ModelFileError):
            raise
        raise ModelFileError(f"{path}: damaged model description ({type(err).__name__}: "
                             f"{err})") from None


def _load_saved_model(folder: Path, client_id: str | None, expert: int | None,
                      warmup: bool) -> SavedModel:
    if (folder / MODEL_FILE).exists():
        if expert is not None or warmup:
            raise ModelFileError(f"{folder} holds one exported model; --expert and --warmup "
                                 "choose a model of a run folder")
        data = _read_json(folder / MODEL_FILE, "fedlease model description")
        client = data["client"]
        if client_id is not None and client_id != client["id"]:
            raise ModelFileError(f"{folder} holds the model of client {client['id']!r}, "
                                 f"not {client_id!r}")
        return SavedModel(_config(data, folder), data["algorithm"], client["id"],
                          AdapterLayout.from_config(client["layout"]),
                          _read_weights(folder / client["weights"]), client["task"],
                          list(client["labels"]))
    run = read_run(folder)
    config = _config(run, folder / RUN_FILE)
    if expert is not None:
        return _server_expert(folder, run, config, expert)
    clients = run["clients"]
    if client_id not in clients:
        asked = "give --client ID" if client_id is None else f"no client {client_id!r}"
        raise ModelFileError(f"{folder}: {asked}; the run's clients are "
                             f"{', '.join(clients) or 'none'}")
    client = clients[client_id]
    layout = AdapterLayout.from_config(client["layout"])
    if warmup:
        if "warmup_weights" not in client:
            raise ModelFileError(f"{folder}: algorithm {run['algorithm']!r} has no warm-up "
                                 "LoRA (FedLEASE and its ablations have one)")
        weights, layout = client["warmup_weights"], AdapterLayout()
    else:
        weights = client["weights"]
    return SavedModel(config, run["algorithm"], client_id, layout,
                      _read_weights(folder / weights), client["task"], list(client["labels"]))


def _server_expert(folder: Path, run: dict, config: RunConfig, expert: int) -> SavedModel:
    """Expert ``expert`` of the server's last round, as a one-LoRA model without a head."""
    server = run.get("server")
    if not server:
        raise ModelFileError(f"{folder}: algorithm {run['algorithm']!r} keeps no shared experts "
                             "on the server (fedlease, its ablations, ifca-lora, fedit and "
                             "feddpa do)")
    if not 0 <= expert < server["num_experts"]:
        raise ModelFileError(f"--expert {expert}: the server of {folder} holds experts "
                             f"0..{server['num_experts'] - 1}")
    stacked = _read_weights(folder / server["weights"])
    state = {key: value[expert : expert + 1] for key, value in stacked.items()}
    return SavedModel(config, run["algorithm"], f"expert-{expert}", AdapterLayout(), state)
