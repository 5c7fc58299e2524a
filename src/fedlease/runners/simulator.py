"""The in-process simulator: every client in one process, around ONE frozen base model.

Per client only the small state (adapters, router, head) is kept; it is swapped into the shared
model for that client's training or evaluation. The base model is loaded once per run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fedlease.algorithms import ALGORITHMS, ClientInfo, Reply
from fedlease.config import RunConfig
from fedlease.data.federation import ClientData
from fedlease.data.sources import load_federation
from fedlease.model.model import default_model_path, load_classifier
from fedlease.reporting.outputs import RunWriter
from fedlease.training import ClientTrainer


@dataclass
class RunResult:
    config: RunConfig
    tasks: dict[str, str]  # client id -> task
    history: list[dict] = field(default_factory=list)  # one entry per round
    report: dict = field(default_factory=dict)  # the algorithm's own results (clustering...)
    wall_seconds: float = 0.0

    @property
    def final(self) -> dict[str, dict]:
        return self.history[-1]["clients"]


def autocast_dtype(device: str) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it; full precision on CPU."""
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def load_base_model(config: RunConfig):
    """The frozen base model with the configured adapters injected, and its tokenizer."""
    return load_classifier(
        config.model.path or default_model_path(), config.model.target_modules,
        config.lora.rank, config.lora.alpha, config.lora.dropout, config.train.device,
    )


def client_trainer(config: RunConfig, model, tokenizer, client: ClientData) -> ClientTrainer:
    return ClientTrainer(
        model, tokenizer, client, max_length=config.model.max_length,
        batch_size=config.train.batch_size, local_epochs=config.train.local_epochs,
        lr=config.train.lr, weight_decay=config.train.weight_decay,
        autocast_dtype=autocast_dtype(config.train.device),
    )


def build_trainers(config: RunConfig, clients: list[ClientData]) -> dict[str, ClientTrainer]:
    """Load the base model once and give every client a trainer over it."""
    model, tokenizer = load_base_model(config)
    return {c.client_id: client_trainer(config, model, tokenizer, c) for c in clients}


def round_entry(rnd: int, seconds: float, replies: dict[str, Reply],
                evaluated: dict[str, dict]) -> dict:
    """One round of the history: per client its training metrics (if it trained) and its
    evaluation metrics, and the mean accuracy over the evaluated clients."""
    per_client = {cid: {**replies[cid].metrics, **metrics} if cid in replies else metrics
                  for cid, metrics in evaluated.items()}
    return {
        "round": rnd,
        "seconds": seconds,
        "mean_accuracy": sum(m["accuracy"] for m in per_client.values()) / len(per_client),
        "clients": per_client,
    }


def run_simulation(config: RunConfig, out_dir: str | Path | None = None,
                   progress: bool = True) -> RunResult:
    """Run ``config.federation.rounds`` rounds of ``config.federation.algorithm``."""
    start = time.perf_counter()
    writer = RunWriter(out_dir) if out_dir is not None else None
    if writer:
        writer.start(config)
    clients = load_federation(config.data, config.federation.seed)
    trainers = build_trainers(config, clients)
    model = next(iter(trainers.values())).model
    infos = [ClientInfo(c.client_id, len(c.train)) for c in clients]
    algorithm_cls = ALGORITHMS[config.federation.algorithm]
    algorithm = algorithm_cls(config, infos, model.adapter_shapes())
    result = RunResult(config, {c.client_id: c.task for c in clients})
    local_states: dict[str, dict] = {c.client_id: {} for c in clients}

    rounds = tqdm(range(1, config.federation.rounds + 1), desc=algorithm.name, unit="round",
                  disable=not progress)
    for rnd in rounds:
        round_start = time.perf_counter()
        replies: dict[str, Reply] = {}
        fit = algorithm.configure_fit(rnd)
        for cid in tqdm(fit, desc=f"round {rnd} train", leave=False, disable=not progress):
            replies[cid], local_states[cid] = algorithm_cls.client_fit(
                fit[cid], local_states[cid], trainers[cid])
        algorithm.aggregate_fit(rnd, replies)
        evaluate = algorithm.configure_evaluate(rnd)
        evaluated = {
            cid: algorithm_cls.client_evaluate(evaluate[cid], local_states[cid], trainers[cid])
            for cid in tqdm(evaluate, desc=f"round {rnd} eval", leave=False,
                            disable=not progress)
        }
        entry = round_entry(rnd, time.perf_counter() - round_start, replies, evaluated)
        result.history.append(entry)
        result.report = algorithm.report()
        rounds.set_postfix(accuracy=f"{entry['mean_accuracy']:.3f}")
        if writer:
            writer.write_round(result)
    result.wall_seconds = time.perf_counter() - start
    if writer:
        # each client's final model: what it kept locally plus the last download
        writer.finish(result, {cid: ({**local_states[cid], **ins.arrays}, ins.config["layout"])
                               for cid, ins in evaluate.items()})
    return result
