"""The Flower ClientApp: one node = one client of the federation.

The node's data: ``node_config["data-path"]`` (a folder of per-client JSONL files on that
machine, see ``load_jsonl_folder``) if given, else the run's own ``[data]`` config (e.g. local
tables partitioned by Flower Datasets partitioners, ``data.source = "datasets"``: every node
computes the same partitions from the seed and keeps its own); in both, ``partition-id`` (0 if
absent) picks the client. What the client keeps between rounds (its head,
the LoRA parts it does not upload, the last download) lives in Flower's ``context.state`` as an
``ArrayRecord``, never in server memory; under ``[privacy]`` what its data has spent lives in
its ledger on the node's disk (``node_config["privacy-ledger"]``, a folder), which outlives
the process and the Flower run. The base model and the tokenized data are loaded once
per process: a Ray actor of the simulation engine keeps them across rounds; a SuperNode starts a
process per message, so there they are loaded per message.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlease.algorithms import ALGORITHMS
from fedlease.config import RunConfig, config_to_dict
from fedlease.data.client_data import ClientData
from fedlease.errors import ConfigError, DataError
from fedlease.privacy.ledger import PrivacyLedger
from fedlease.reporting.data_report import client_data_summary
from fedlease.tasks import task_of
from fedlease.tasks.loading import client_trainer, load_base_model, load_clients
from fedlease.training import LocalTrainer
from fedlease.transports.flower.records import (
    from_array_record,
    metric_record,
    read_instruction,
    reply_content,
    to_array_record,
)
from fedlease.transports.flower.settings import read_run_config

LOCAL_STATE = "fedlease-local-state"

app = ClientApp()

_models: dict[str, tuple] = {}  # base model and tokenizer, by the config parts that build them
_clients: dict[str, tuple[ClientData, int, LocalTrainer]] = {}
_federations: dict[str, list] = {}  # every client of the run's [data], by what defines them


def node_clients(config: RunConfig, node_config: dict) -> tuple[list[ClientData], str]:
    """The clients this node may be, and where they come from (for error messages)."""
    if "data-path" in node_config:
        path = str(node_config["data-path"])
        return task_of(config).load_folder(Path(path)), f"node_config data-path = {path!r}"
    parts = config_to_dict(config)
    key = json.dumps([parts["data"], parts["model"]["task"], parts["federation"]["seed"]])
    if key not in _federations:  # the virtual clients of one Ray actor read the data once
        _federations[key] = load_clients(config)
    return _federations[key], f"the run's [data] (source = {config.data.source!r})"


def node_client(config: RunConfig, node_config: dict) -> tuple[ClientData, int, LocalTrainer]:
    """This node's client, the size of the federation it was taken from, and its trainer."""
    parts = config_to_dict(config)
    model_key = json.dumps([parts["model"], parts["lora"], parts["train"]["device"]])
    key = json.dumps([parts, dict(node_config)], sort_keys=True, default=str)
    if key not in _clients:
        clients, where = node_clients(config, node_config)
        index = int(node_config.get("partition-id", 0))
        if not 0 <= index < len(clients):
            raise DataError(f"node_config partition-id = {index}: {where} has {len(clients)} "
                            f"client(s), so partition-id must be in 0..{len(clients) - 1}")
        if model_key not in _models:
            _models[model_key] = load_base_model(config)
        model, tokenizer = _models[model_key]
        trainer = client_trainer(config, model, tokenizer, clients[index])
        if trainer.privacy is not None:
            trainer.privacy.ledger = node_ledger(node_config, clients[index].client_id)
        _clients[key] = (clients[index], len(clients), trainer)
    return _clients[key]


# node_config key: the folder on the node where each client's privacy ledger is kept
PRIVACY_LEDGER = "privacy-ledger"


def node_ledger(node_config: dict, client_id: str) -> PrivacyLedger:
    """The client's privacy ledger (required under ``[privacy]``): the node's own record of
    what its data has spent, read before every release (``privacy/ledger.py``)."""
    folder = node_config.get(PRIVACY_LEDGER)
    if not isinstance(folder, str) or not folder:
        raise ConfigError(f"node_config {PRIVACY_LEDGER} = {folder!r}: expected a folder on "
                          "this node for its client's privacy ledger (required with [privacy] "
                          "on: what the client's data has spent must outlive the process and "
                          "the run)")
    return PrivacyLedger.in_folder(folder, client_id)


# node_config key: true = this node also sends its per-label example counts (data.json, the
# label histogram); they are derived from the training examples and no epsilon counts them
SHARE_LABEL_COUNTS = "share-label-counts"


def shares_label_counts(node_config: dict) -> bool:
    value = node_config.get(SHARE_LABEL_COUNTS, False)
    if not isinstance(value, bool):
        raise DataError(f"node_config {SHARE_LABEL_COUNTS} = {value!r}: expected true or false")
    return value


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """What the server needs before round 1: who this client is, its sizes and its adapter
    shapes (its per-label counts only if the node opts in: ``share-label-counts``)."""
    config, _ = read_run_config(context.run_config)
    client, federation_size, trainer = node_client(config, context.node_config)
    summary = client_data_summary(client, shares_label_counts(context.node_config))
    info = ConfigRecord({
        "client-id": client.client_id,
        "task": client.task,
        "order": int(context.node_config.get("partition-id", 0)),
        "federation-size": federation_size,
        "adapter-shapes": json.dumps(trainer.model.adapter_shapes()),
        "representation-dim": trainer.model.representation_dim,
        "data": json.dumps(summary),
        "has-state": LOCAL_STATE in context.state,  # kept from earlier rounds of this run
    })
    metrics = MetricRecord({"num-examples": trainer.num_train})
    return Message(content=RecordDict({"info": info, "metrics": metrics}), reply_to=msg)


def _instruction(msg: Message, context: Context):
    config, _ = read_run_config(context.run_config)
    client, _, trainer = node_client(config, context.node_config)
    algorithm_cls = ALGORITHMS[config.federation.algorithm]
    client_id, ins = read_instruction(msg.content, algorithm_cls.instruction_fields)
    if client_id != client.client_id:
        raise RuntimeError(f"node {context.node_id} holds client {client.client_id!r} but got "
                           f"the instruction for {client_id!r}")
    local = (from_array_record(context.state[LOCAL_STATE])
             if LOCAL_STATE in context.state else {})
    return algorithm_cls.client, ins, local, trainer


def _reply(reply, context: Context, msg: Message) -> Message:
    """The reply, its tensors in the run's transport precision."""
    config, _ = read_run_config(context.run_config)
    return Message(content=reply_content(reply, config.federation.transport_precision),
                   reply_to=msg)


@app.query("profile")
def profile(msg: Message, context: Context) -> Message:
    """What the algorithm asks of this client once, before training (FedLEASE's embedding)."""
    client_side, ins, _, trainer = _instruction(msg, context)
    return _reply(client_side.profile(ins, trainer), context, msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    client_side, ins, local, trainer = _instruction(msg, context)
    reply, local = client_side.fit(ins, local, trainer)
    context.state[LOCAL_STATE] = to_array_record(local)
    return _reply(reply, context, msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    client_side, ins, local, trainer = _instruction(msg, context)
    metrics = client_side.evaluate(ins, local, trainer)
    record = metric_record(metrics, trainer.num_test)
    return Message(content=RecordDict({"metrics": record}), reply_to=msg)
