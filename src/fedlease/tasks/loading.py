"""Loading what the configured task trains: the clients' data, the frozen base model and each
client's local trainer. The client side every transport shares (the simulator for every client,
the Flower ClientApp for its node's client) and ``fedlease predict``."""

from __future__ import annotations

import sys

import torch

from fedlease.algorithms import ALGORITHMS
from fedlease.config import RunConfig
from fedlease.data.skewed import check_every_client_has_examples
from fedlease.data.sources import SOURCES
from fedlease.errors import ConfigError, DataError
from fedlease.model.adapted import position_limit
from fedlease.model.hub import resolve_model_path
from fedlease.model.memory import (
    check_fits,
    enable_gradient_checkpointing,
    read_model_shape,
    run_settings,
)
from fedlease.privacy.client import client_privacy
from fedlease.tasks import task_of
from fedlease.training import LocalTrainer


def base_model_path(config: RunConfig) -> str:
    """``model.path``, or the default model of the configured task."""
    return config.model.path or task_of(config).default_model_path()


def load_base_model(config: RunConfig, training: bool = True):
    """The frozen base model of the configured task with the adapters injected, and its
    tokenizer. For ``training``, the peak memory is estimated first (printed; refused if it
    exceeds the device, ``model/memory.py``) and gradient checkpointing switched on if set."""
    if config.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {config.train.device!r}: this machine has no CUDA "
                          "device; expected cpu")
    task = task_of(config)
    path = base_model_path(config)
    longest, what = task.longest_input(config.model)
    if training:
        print(f"fedlease: {memory_line(config, path, task.auto_class, longest)}",
              file=sys.stderr)
    model, tokenizer = task.load_model(path, config)
    if config.train.gradient_checkpointing:
        enable_gradient_checkpointing(model.backbone)
    limit = position_limit(model.backbone, tokenizer)
    if limit is not None and longest > limit:
        raise ConfigError(f"{what} = {longest}: expected at most {limit}, the number of "
                          f"positions the model ({config.model.path or 'the default'}) reads")
    return model, tokenizer


def memory_line(config: RunConfig, path: str, auto_class: str, longest: int) -> str:
    """The memory estimate of one training process beside the device's free memory."""
    folder = resolve_model_path(path, config.model.download, config.model.revision)
    try:
        shape = read_model_shape(folder, auto_class, config.model.target_modules)
    except (AttributeError, KeyError, OSError, TypeError, ValueError) as err:  # unreadable
        return f"no memory estimate for this model ({type(err).__name__}: {err})"
    return check_fits(shape, run_settings(config, shape, longest), config.train.device,
                      enforce=config.train.check_memory)


def client_trainer(config: RunConfig, model, tokenizer, client) -> LocalTrainer:
    """The local trainer of one client (of the configured task) over the shared model, with
    its DP setup when ``[privacy]`` is on."""
    trainer = task_of(config).trainer(config, model, tokenizer, client)
    trainer.privacy = client_privacy(
        config, trainer.num_train,
        ALGORITHMS[config.federation.algorithm].releases_embedding(config))
    return trainer


def load_clients(config: RunConfig) -> list:
    """The federation's clients, as examples of the configured task (at least two)."""
    clients = task_of(config).load_clients(config.data, config.federation.seed)
    check_every_client_has_examples(clients)
    if len(clients) < 2:
        where = ("data.tasks x data.clients_per_task make" if SOURCES[config.data.source].uses_tasks
                 else f"data.source = {config.data.source!r} (data.path = {config.data.path!r}) "
                 "gives")
        raise DataError(f"{where} {len(clients)} client ({clients[0].client_id!r}); a "
                        "federation needs at least 2 clients")
    return clients


def build_trainers(config: RunConfig, clients) -> dict[str, LocalTrainer]:
    """Load the base model once and give every client a trainer over it."""
    model, tokenizer = load_base_model(config)
    return {c.client_id: client_trainer(config, model, tokenizer, c) for c in clients}
