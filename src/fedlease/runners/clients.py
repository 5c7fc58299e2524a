"""The client side every runner shares: the clients' data, the frozen base model and each
client's local trainer, of the configured task (used by the simulator for every client and by
the Flower ClientApp for its node's client)."""

from __future__ import annotations

import torch

from fedlease.config import RunConfig
from fedlease.data.federation import ClientData
from fedlease.data.instructions import InstructionClientData, load_instruction_federation
from fedlease.data.sources import load_federation
from fedlease.errors import ConfigError, DataError
from fedlease.generation import GenerationTrainer
from fedlease.model.causal_lm import default_generation_model_path, load_causal_lm
from fedlease.model.model import default_model_path, load_classifier, position_limit
from fedlease.training import ClientTrainer, LocalTrainer, autocast_dtype


def base_model_path(config: RunConfig) -> str:
    """``model.path``, or the default model of the configured task."""
    if config.model.path:
        return config.model.path
    if config.model.task == "generation":
        return default_generation_model_path()
    return default_model_path()


def load_base_model(config: RunConfig):
    """The frozen base model of the configured task with the adapters injected, and its
    tokenizer."""
    if config.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {config.train.device!r}: this machine has no CUDA "
                          "device; expected cpu")
    adapters = (config.model.target_modules, config.lora.rank, config.lora.alpha,
                config.lora.dropout, config.train.device)
    if config.model.task == "generation":
        model, tokenizer = load_causal_lm(base_model_path(config), *adapters)
        longest = config.model.max_length + config.model.max_new_tokens
        what = "model.max_length + model.max_new_tokens"
    else:
        model, tokenizer = load_classifier(base_model_path(config), *adapters)
        longest, what = config.model.max_length, "model.max_length"
    limit = position_limit(model.backbone, tokenizer)
    if limit is not None and longest > limit:
        raise ConfigError(f"{what} = {longest}: expected at most {limit}, the number of "
                          f"positions the model ({config.model.path or 'the default'}) reads")
    return model, tokenizer


def client_trainer(config: RunConfig, model, tokenizer, client) -> LocalTrainer:
    """The local trainer of one client (of the configured task) over the shared model."""
    common = {"max_length": config.model.max_length, "batch_size": config.train.batch_size,
              "local_epochs": config.train.local_epochs, "lr": config.train.lr,
              "weight_decay": config.train.weight_decay,
              "autocast_dtype": autocast_dtype(config.train.device, config.train.precision)}
    if config.model.task == "generation":
        return GenerationTrainer(model, tokenizer, client, **common,
                                 max_new_tokens=config.model.max_new_tokens)
    return ClientTrainer(model, tokenizer, client, **common)


def load_clients(config: RunConfig) -> list[ClientData] | list[InstructionClientData]:
    """The federation's clients, as examples of the configured task (at least two)."""
    if config.model.task == "generation":
        clients = load_instruction_federation(config.data, config.federation.seed)
    else:
        clients = load_federation(config.data, config.federation.seed)
    if len(clients) < 2:
        where = (f"data.path = {config.data.path!r} holds" if config.data.source == "jsonl"
                 else "data.tasks x data.clients_per_task make")
        raise DataError(f"{where} {len(clients)} client ({clients[0].client_id!r}); a "
                        "federation needs at least 2 clients")
    return clients


def build_trainers(config: RunConfig, clients) -> dict[str, LocalTrainer]:
    """Load the base model once and give every client a trainer over it."""
    model, tokenizer = load_base_model(config)
    return {c.client_id: client_trainer(config, model, tokenizer, c) for c in clients}
