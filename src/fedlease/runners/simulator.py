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
from fedlease.algorithms.validation import UploadsRejected, accept_replies
from fedlease.config import ConfigError, RunConfig
from fedlease.data.federation import ClientData, DataError
from fedlease.data.instructions import InstructionClientData, load_instruction_federation
from fedlease.data.sources import load_federation
from fedlease.generation import GenerationTrainer
from fedlease.model.causal_lm import default_generation_model_path, load_causal_lm
from fedlease.model.lora import AdapterLayout
from fedlease.model.model import default_model_path, load_classifier, position_limit
from fedlease.reporting.data_report import data_report
from fedlease.reporting.outputs import RunWriter, estimate_run_bytes
from fedlease.runners.checkpoint import (
    Checkpoint,
    CheckpointError,
    algorithm_state,
    check_fits_model,
    checkpoint_dir,
    data_fingerprint,
    load_checkpoint,
    restore_algorithm_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fedlease.saved_models import describe_run
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


def client_state_bytes(model, rank: int, layout: AdapterLayout, head_floats: int) -> int:
    """Size of a client state holding ``layout``'s LoRAs and router on every adapted layer,
    and the head, all float32."""
    slots = len(layout.router_slots or ())
    floats = sum(layout.num_experts * rank * (d_in + d_out) + slots * d_in
                 for d_in, d_out in model.adapter_shapes().values())
    return 4 * (floats + head_floats)


def run_bytes(config: RunConfig, algorithm, trainers: dict[str, LocalTrainer]) -> int:
    """What the run writes at its peak (see ``estimate_run_bytes``): client states bounded by
    the algorithm's largest client layout; the server holds at most ``max_experts`` of them."""
    model = next(iter(trainers.values())).model
    head = max(sum(t.numel() for t in trainer.new_head(0).values())
               for trainer in trainers.values())
    client = client_state_bytes(model, config.lora.rank, algorithm.client_layout_bound(), head)
    return estimate_run_bytes(client, config.federation.max_experts * client, len(trainers),
                              config.federation.rounds)


def load_resumable(out_dir, config: RunConfig, model, clients, fingerprint: str) -> Checkpoint:
    """The checkpoint in ``out_dir``, checked against this run's clients, data and model."""
    checkpoint = load_checkpoint(out_dir, config)
    ids = {c.client_id for c in clients}
    if set(checkpoint.local_states) != ids:
        raise CheckpointError(f"{out_dir}: the checkpoint's clients "
                              f"{sorted(checkpoint.local_states)} are not the data's "
                              f"{sorted(ids)}")
    check_fits_model(checkpoint, model, config.lora.rank, checkpoint_dir(out_dir))
    if checkpoint.data_sha256 != fingerprint:
        raise CheckpointError(f"{out_dir}: the clients' examples differ from those the run "
                              f"began with (the files in data.path = {config.data.path!r} "
                              "changed?); a run resumes only on the data it began with")
    return checkpoint


def run_simulation(config: RunConfig, out_dir: str | Path | None = None,
                   progress: bool = True, resume: bool = False,
                   overwrite: bool = False) -> RunResult:
    """Run ``config.federation.rounds`` rounds of ``config.federation.algorithm``; with
    ``resume``, continue from the checkpoint in ``out_dir`` after its last finished round;
    with ``overwrite``, replace the run ``out_dir`` holds (else such a folder is refused).
    Nothing is written to ``out_dir`` before the data, the model and the checkpoint loaded."""
    start = time.perf_counter()
    writer = RunWriter(out_dir, resume, overwrite) if out_dir is not None else None
    if writer:
        writer.check()
    clients = load_clients(config)
    fingerprint = data_fingerprint(clients) if writer else ""
    trainers = build_trainers(config, clients)
    model = next(iter(trainers.values())).model
    infos = [ClientInfo(c.client_id, len(c.train)) for c in clients]
    algorithm_cls = ALGORITHMS[config.federation.algorithm]
    algorithm = algorithm_cls(config, infos, model.adapter_shapes(), model.representation_dim)
    result = RunResult(config, {c.client_id: c.task for c in clients},
                       data=data_report(clients))
    local_states: dict[str, dict] = {c.client_id: {} for c in clients}
    first_round = 1
    if resume:
        checkpoint = load_resumable(out_dir, config, model, clients, fingerprint)
        restore_algorithm_state(algorithm, checkpoint.server_state)
        set_rng_state(checkpoint.rng)
        local_states, result.history = checkpoint.local_states, checkpoint.history
        result.report = algorithm.report()
        first_round = checkpoint.round + 1
    else:
        profile = algorithm.configure_profile()
        if profile:  # before round 1: whatever the algorithm asks of every client once
            replies = {cid: algorithm_cls.client_profile(profile[cid], trainers[cid])
                       for cid in tqdm(profile, desc="profile", leave=False,
                                       disable=not progress)}
            accepted, rejected = accept_replies(algorithm, 0, profile, replies)
            if rejected and not accepted:
                raise UploadsRejected(0, rejected, config.federation.max_update_norm)
            algorithm.aggregate_profile(accepted)
    if writer:
        writer.check_free_space(run_bytes(config, algorithm, trainers))
        writer.start(config)
        writer.write_data(result.data)

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
        if rejected and not accepted:
            raise UploadsRejected(rnd, rejected, config.federation.max_update_norm,
                                  out_dir if writer and result.history else None)
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
            if algorithm.uses_warmup and rnd == config.federation.warmup_rounds:
                for cid, state in local_states.items():
                    writer.write_tensors(f"adapters/warmup/{cid}.safetensors", state,
                                         AdapterLayout().to_config())
            save_checkpoint(out_dir, Checkpoint(rnd, algorithm_state(algorithm), local_states,
                                                result.history, rng_state(),
                                                fingerprint), config)
    result.wall_seconds = time.perf_counter() - start
    if writer:
        write_final_models(writer, algorithm, clients, local_states, result)
    return result


def write_final_models(writer: RunWriter, algorithm, clients, local_states: dict[str, dict],
                       result: RunResult) -> None:
    """Each client's final model (what it kept locally plus the last download), the server's
    experts, and ``run.json`` describing them (see ``fedlease.saved_models``)."""
    config = result.config
    final = algorithm.configure_evaluate(config.federation.rounds)
    experts = algorithm.server_experts()
    if experts:
        writer.write_tensors("adapters/server.safetensors", experts)
    labels = {c.client_id: c.labels if isinstance(c, ClientData) else [] for c in clients}
    description = describe_run(
        config, base_model_path(config),
        {cid: {"task": result.tasks[cid], "labels": labels[cid],
               "layout": ins.config["layout"]} for cid, ins in final.items()},
        server_experts=len(next(iter(experts.values()))) if experts else 0,
        warmup=algorithm.uses_warmup and config.federation.warmup_rounds > 0)
    writer.finish(result, {cid: (type(algorithm).install(ins, local_states[cid]),
                                 ins.config["layout"])
                           for cid, ins in final.items()}, description)
