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
from fedlease.algorithms.validation import accept_replies
from fedlease.config import ConfigError, RunConfig
from fedlease.data.federation import ClientData
from fedlease.data.instructions import InstructionClientData, load_instruction_federation
from fedlease.data.sources import load_federation
from fedlease.generation import GenerationTrainer
from fedlease.model.causal_lm import default_generation_model_path, load_causal_lm
from fedlease.model.model import default_model_path, load_classifier
from fedlease.reporting.data_report import data_report
from fedlease.reporting.outputs import RunWriter, estimate_run_bytes
from fedlease.runners.checkpoint import (
    Checkpoint,
    CheckpointError,
    algorithm_state,
    load_checkpoint,
    restore_algorithm_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fedlease.training import ClientTrainer, LocalTrainer, autocast_dtype


@dataclass
class RunResult:
    config: RunConfig
    tasks: dict[str, str]  # client id -> task
    history: list[dict] = field(default_factory=list)  # one entry per round
    report: dict = field(default_factory=dict)  # the algorithm's own results (clustering...)
    data: dict = field(default_factory=dict)  # per client sizes and labels (data.json)
    wall_seconds: float = 0.0

    @property
    def final(self) -> dict[str, dict]:
        return self.history[-1]["clients"]

    @property
    def metric(self) -> str:
        """The primary metric (``accuracy``, ``rouge_l``): a key of every client's metrics."""
        return self.config.model.metric


def load_base_model(config: RunConfig):
    """The frozen base model of the configured task with the adapters injected, and its
    tokenizer."""
    if config.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {config.train.device!r}: this machine has no CUDA "
                          "device; expected cpu")
    adapters = (config.model.target_modules, config.lora.rank, config.lora.alpha,
                config.lora.dropout, config.train.device)
    if config.model.task == "generation":
        return load_causal_lm(config.model.path or default_generation_model_path(), *adapters)
    return load_classifier(config.model.path or default_model_path(), *adapters)


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
    """The federation's clients, as examples of the configured task."""
    if config.model.task == "generation":
        return load_instruction_federation(config.data, config.federation.seed)
    return load_federation(config.data, config.federation.seed)


def build_trainers(config: RunConfig, clients) -> dict[str, LocalTrainer]:
    """Load the base model once and give every client a trainer over it."""
    model, tokenizer = load_base_model(config)
    return {c.client_id: client_trainer(config, model, tokenizer, c) for c in clients}


def round_entry(rnd: int, seconds: float, replies: dict[str, Reply],
                evaluated: dict[str, dict], metric: str = "accuracy") -> dict:
    """One round of the history: per client its training metrics (if it trained) and its
    evaluation metrics, and the means over the evaluated clients of the accuracy (exact match
    for generation) and of the task's primary ``metric``."""
    per_client = {cid: {**replies[cid].metrics, **metrics} if cid in replies else metrics
                  for cid, metrics in evaluated.items()}
    means = {f"mean_{name}": sum(m[name] for m in per_client.values()) / len(per_client)
             for name in dict.fromkeys(("accuracy", metric))}
    return {"round": rnd, "seconds": seconds, **means, "clients": per_client}


def client_state_bytes(model, rank: int, num_experts: int, head_floats: int) -> int:
    """Upper bound of one client state's size: ``num_experts`` LoRAs and a router of
    ``2 * num_experts - 1`` slots on every adapted layer, and the head, all float32."""
    floats = sum(num_experts * rank * (d_in + d_out) + (2 * num_experts - 1) * d_in
                 for d_in, d_out in model.adapter_shapes().values())
    return 4 * (floats + head_floats)


def run_simulation(config: RunConfig, out_dir: str | Path | None = None,
                   progress: bool = True, resume: bool = False) -> RunResult:
    """Run ``config.federation.rounds`` rounds of ``config.federation.algorithm``; with
    ``resume``, continue from the checkpoint in ``out_dir`` after its last finished round."""
    start = time.perf_counter()
    writer = RunWriter(out_dir) if out_dir is not None else None
    if writer:
        writer.start(config)
    clients = load_clients(config)
    trainers = build_trainers(config, clients)
    model = next(iter(trainers.values())).model
    infos = [ClientInfo(c.client_id, len(c.train)) for c in clients]
    algorithm_cls = ALGORITHMS[config.federation.algorithm]
    algorithm = algorithm_cls(config, infos, model.adapter_shapes())
    result = RunResult(config, {c.client_id: c.task for c in clients},
                       data=data_report(clients))
    if writer:
        writer.write_data(result.data)
    local_states: dict[str, dict] = {c.client_id: {} for c in clients}
    first_round = 1
    if writer:
        per_client = client_state_bytes(model, config.lora.rank, config.federation.max_experts,
                                        max(sum(t.numel() for t in trainer.new_head(0).values())
                                            for trainer in trainers.values()))
        writer.check_free_space(estimate_run_bytes(per_client, len(clients),
                                                   config.federation.max_experts))
    if resume:
        checkpoint = load_checkpoint(out_dir, config)
        if set(checkpoint.local_states) != set(local_states):
            raise CheckpointError(f"{out_dir}: the checkpoint's clients "
                                  f"{sorted(checkpoint.local_states)} are not the data's "
                                  f"{sorted(local_states)}")
        restore_algorithm_state(algorithm, checkpoint.server_state)
        set_rng_state(checkpoint.rng)
        local_states, result.history = checkpoint.local_states, checkpoint.history
        result.report = algorithm.report()
        first_round = checkpoint.round + 1

    rounds = tqdm(range(first_round, config.federation.rounds + 1), desc=algorithm.name,
                  unit="round", initial=first_round - 1, total=config.federation.rounds,
                  disable=not progress)
    for rnd in rounds:
        round_start = time.perf_counter()
        replies: dict[str, Reply] = {}
        fit = algorithm.configure_fit(rnd)
        for cid in tqdm(fit, desc=f"round {rnd} train", leave=False, disable=not progress):
            replies[cid], local_states[cid] = algorithm_cls.client_fit(
                fit[cid], local_states[cid], trainers[cid])
        accepted, rejected = accept_replies(algorithm, rnd, fit, replies)
        algorithm.aggregate_fit(rnd, accepted)
        evaluate = algorithm.configure_evaluate(rnd)
        evaluated = {
            cid: algorithm_cls.client_evaluate(evaluate[cid], local_states[cid], trainers[cid])
            for cid in tqdm(evaluate, desc=f"round {rnd} eval", leave=False,
                            disable=not progress)
        }
        entry = round_entry(rnd, time.perf_counter() - round_start, accepted, evaluated,
                            result.metric)
        entry["rejected"] = rejected
        result.history.append(entry)
        result.report = algorithm.report()
        rounds.set_postfix({result.metric: f"{entry['mean_' + result.metric]:.3f}"})
        if writer:
            writer.write_round(result)
            save_checkpoint(out_dir, Checkpoint(rnd, algorithm_state(algorithm), local_states,
                                                result.history, rng_state()), config)
    result.wall_seconds = time.perf_counter() - start
    if writer:
        # each client's final model: what it kept locally plus the last download
        final = algorithm.configure_evaluate(config.federation.rounds)
        writer.finish(result, {cid: (algorithm_cls.install(ins, local_states[cid]),
                                     ins.config["layout"])
                               for cid, ins in final.items()})
    return result
