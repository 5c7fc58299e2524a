"""A client that was not in the federation joins a finished run: ``fedlease join``.

The server's state after the run's last round is read back from the run folder's checkpoint,
and the newcomer protocol of the run's algorithm (``Algorithm.newcomer``, docs/algorithms.md) is
played in this process: the newcomer uploads what places it (FedLEASE: its allocation signal),
gets what it starts from (its cluster's experts and router; IFCA every cluster; FedIT the global
LoRA; local LoRA the common init) and adapts for its budget of local steps on its own labelled
data. The model it ends with is written as a ``fedlease`` export folder, which ``fedlease
predict`` and ``fedlease export`` read like any other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from fedlease.algorithms import ALGORITHMS, Algorithm, ClientInfo
from fedlease.algorithms.messages import Tensors
from fedlease.config import RunConfig
from fedlease.configure import load_config
from fedlease.errors import ConfigError, DataError, ModelFileError
from fedlease.export import export_model
from fedlease.model.lora import AdapterLayout
from fedlease.reporting.outputs import CONFIG_FILE
from fedlease.saved_models import SavedModel
from fedlease.tasks import task_of


@dataclass
class Joined:
    """A newcomer's model, and its metrics on its own test split (empty without one)."""

    model: SavedModel
    metrics: dict


def onboard(algorithm: Algorithm, trainer, steps: int) -> tuple[Tensors, AdapterLayout]:
    """The newcomer protocol of ``algorithm`` for the client of ``trainer``, in one process:
    its placement signal if asked, what it starts from, ``steps`` local steps."""
    client = algorithm.client
    request = algorithm.newcomer_request(steps)
    signal = client.newcomer_signal(request, trainer) if request is not None else None
    ins = algorithm.newcomer(steps, signal)
    return client.onboard(ins, trainer), ins.layout


def restore_server(run_dir: Path, config: RunConfig, model) -> Algorithm:
    """The run's algorithm as its server was after the last checkpointed round."""
    from fedlease.federation.checkpoint import load_checkpoint, restore_algorithm_state

    checkpoint = load_checkpoint(run_dir, config)
    ids = checkpoint.runner.get("clients", list(checkpoint.local_states))
    # the clients' sizes weigh their uploads in an average; a newcomer is placed without them
    algorithm = ALGORITHMS[config.federation.algorithm](
        config, [ClientInfo(cid, 1) for cid in ids], model.adapter_shapes(),
        model.representation_dim)
    restore_algorithm_state(algorithm, checkpoint.server_state)
    return algorithm


def newcomer_data(config: RunConfig, data: Path, client_id: str | None):
    """The newcomer's labelled examples: one client of a folder of per-client JSONL files (the
    format of a Flower node's data, ``load_jsonl_folder``)."""
    if not data.is_dir():
        raise DataError(f"--data {data}: expected a folder of per-client JSONL files "
                        "(<client>.jsonl, lines {\"text\", \"label\", \"split\"?})")
    clients = {c.client_id: c for c in task_of(config).load_folder(data)}
    if client_id is None and len(clients) == 1:
        return next(iter(clients.values()))
    if client_id not in clients:
        asked = "give --client NAME" if client_id is None else f"no client {client_id!r}"
        raise DataError(f"--data {data}: {asked}; it holds {', '.join(sorted(clients))}")
    client = clients[client_id]
    if not client.train:
        raise DataError(f"--data {data}: client {client.client_id!r} has no training examples "
                        "to adapt on")
    return client


def join(run_dir: str | Path, data: str | Path, out: str | Path, steps: int,
         client_id: str | None = None, device: str = "cpu") -> Joined:
    """Onboard the client of ``data`` into the finished run ``run_dir`` with ``steps`` local
    steps; its model is written to ``out`` (a ``fedlease`` export folder)."""
    from fedlease.tasks.loading import base_model_path, client_trainer, load_base_model

    run_dir = Path(run_dir)
    if steps < 0:
        raise ModelFileError(f"--steps {steps}: expected an integer >= 0")
    if not (run_dir / CONFIG_FILE).exists():
        raise ModelFileError(f"{run_dir}: no {CONFIG_FILE}; expected the folder of a "
                             "finished `fedlease run`")
    run_config = load_config(run_dir / CONFIG_FILE, {"output": {"dir": str(run_dir)},
                                                     "train": {"device": device}})
    if run_config.privacy.enabled:
        raise ConfigError(f"{run_dir}: a [privacy] run; a newcomer's local steps are not "
                          "DP-SGD, so fedlease join does not onboard into it")
    config = dataclasses.replace(
        run_config, model=dataclasses.replace(run_config.model,
                                              path=base_model_path(run_config)))
    client = newcomer_data(config, Path(data), client_id)
    model, tokenizer = load_base_model(config, training=True)
    trainer = client_trainer(config, model, tokenizer, client)
    algorithm = restore_server(run_dir, run_config, model)
    state, layout = onboard(algorithm, trainer, steps)
    saved = SavedModel(config, config.federation.algorithm, client.client_id, layout, state,
                       client.task, list(getattr(client, "labels", [])))
    export_model(saved, "fedlease", out)
    metrics = trainer.evaluate(state, layout) if trainer.num_test else {}
    return Joined(saved, metrics)
