"""The in-process simulator: every client in one process, around ONE frozen base model.

Per client only the small state (adapters, router, head) is kept; it is swapped into the shared
model for that client's training or evaluation. The base model is loaded once per run. The
rounds are the engine's (``federation.engine``); this module is its in-process ``Transport``.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from fedlease.algorithms import ALGORITHMS, ClientInfo, Instruction, Reply
from fedlease.attacks import attacked_clients, attacked_trainers
from fedlease.config import RunConfig
from fedlease.data.client_data import ClientData
from fedlease.federation.checkpoint import data_fingerprint
from fedlease.federation.client_states import client_states
from fedlease.federation.engine import (
    ClientRoster,
    RunResult,
    client_state_bytes,
    run_rounds,
)
from fedlease.federation.sampling import ClientSampling
from fedlease.reporting.data_report import data_report
from fedlease.reporting.outputs import RunWriter, describe_run, estimate_run_bytes
from fedlease.tasks.loading import base_model_path, build_trainers, load_clients
from fedlease.training import LocalTrainer


def run_bytes(config: RunConfig, algorithm, trainers: dict[str, LocalTrainer]) -> int:
    """What the run writes at its peak (see ``estimate_run_bytes``): client states bounded by
    the algorithm's largest client layout; the server holds at most ``max_experts`` of them."""
    model = next(iter(trainers.values())).model
    head = max(sum(t.numel() for t in trainer.new_head(0).values())
               for trainer in trainers.values())
    client = client_state_bytes(model.adapter_shapes(), config.lora.rank,
                                algorithm.client_layout_bound(), head)
    return estimate_run_bytes(client, config.federation.max_experts * client, len(trainers),
                              config.federation.rounds)


class InProcessTransport:
    """Every client trained and evaluated here, its local state kept in ``local_states``."""

    encodes_tensors = False  # nothing is encoded in one process: the engine rounds the tensors

    def __init__(self, config: RunConfig, clients, trainers: dict[str, LocalTrainer],
                 progress: bool):
        self.config, self.clients, self.trainers = config, clients, trainers
        self.client_side = ALGORITHMS[config.federation.algorithm].client
        self.sampling = ClientSampling.of(config)
        # on disk under sampling: memory must not grow with every client's state
        self.local_states = client_states([c.client_id for c in clients],
                                          on_disk=self.sampling.samples)
        self.stateless: set[str] = set()  # every state stays in this process
        self.progress = progress
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = data_fingerprint(self.clients)
        return self._fingerprint

    def run_bytes(self, algorithm) -> int:
        return run_bytes(self.config, algorithm, self.trainers)

    def choose_fit(self, rnd: int) -> list[str]:
        """The clients of the sampling rule every transport shares (all by default)."""
        return self.sampling.fit_clients([c.client_id for c in self.clients], rnd)

    def reachable(self, clients: list[str]) -> list[str]:
        return clients

    def _bar(self, ids, desc: str):
        return tqdm(ids, desc=desc, leave=False, disable=not self.progress)

    def profile(self, instructions: dict[str, Instruction]) -> dict[str, Reply]:
        return {cid: self.client_side.profile(instructions[cid], self.trainers[cid])
                for cid in self._bar(instructions, "profile")}

    def fit(self, rnd: int, instructions: dict[str, Instruction]) -> dict[str, Reply]:
        replies = {}
        for cid in self._bar(instructions, f"round {rnd} train"):
            replies[cid], self.local_states[cid] = self.client_side.fit(
                instructions[cid], self.local_states[cid], self.trainers[cid])
        return replies

    def evaluate(self, rnd: int, instructions: dict[str, Instruction]) -> dict[str, dict]:
        return {cid: self.client_side.evaluate(instructions[cid],
                                                        self.local_states[cid],
                                                        self.trainers[cid])
                for cid in self._bar(instructions, f"round {rnd} eval")}

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass

    def round_done(self, entry: dict, metric: str) -> None:
        pass

    def finish(self, writer: RunWriter, algorithm, result: RunResult) -> None:
        """Each client's final model (what it kept locally plus the last download), the
        server's experts, and ``run.json`` describing them (``describe_run``, read by
        ``fedlease.saved_models``); clients that never trained (never sampled) have none."""
        config = result.config
        # a client never sampled (client sampling) trained nothing: it has no model to save
        final = {cid: ins for cid, ins in
                 algorithm.configure_evaluate(config.federation.rounds).items()
                 if self.local_states.has(cid)}
        experts = algorithm.server_experts()
        if experts:
            writer.write_server_experts(experts)
        labels = {c.client_id: c.labels if isinstance(c, ClientData) else []
                  for c in self.clients}
        description = describe_run(
            config, base_model_path(config),
            {cid: {"task": result.tasks[cid], "labels": labels[cid],
                   "layout": ins.layout.to_config()} for cid, ins in final.items()},
            server_experts=len(next(iter(experts.values()))) if experts else 0,
            warmup=algorithm.uses_warmup and config.federation.warmup_rounds > 0)
        writer.finish(result, {cid: (algorithm.client.install(ins, self.local_states[cid]),
                                     ins.layout.to_config())
                               for cid, ins in final.items()}, description)


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
    clients = attacked_clients(config, load_clients(config))  # [attack]: an experiment
    trainers = attacked_trainers(config, build_trainers(config, clients))
    model = next(iter(trainers.values())).model
    roster = ClientRoster([ClientInfo(c.client_id, len(c.train)) for c in clients],
                            {c.client_id: c.task for c in clients}, data_report(clients),
                            model.adapter_shapes(), model.representation_dim,
                            getattr(model, "hidden_size", None))
    transport = InProcessTransport(config, clients, trainers, progress)
    return run_rounds(config, roster, transport, writer, resume, progress,
                      finish=transport.finish, start=start)
