"""The round engine: the one loop every runner drives (see docs/architecture.md).

The engine owns what must not differ between transports: the profile step before round 1, per
round ``configure_fit`` -> client training -> upload validation (``accept_replies``) ->
``aggregate_fit`` -> ``configure_evaluate`` -> client evaluation -> the round's history entry,
the output folder (free space, metrics, reports, final models) and a server checkpoint after
every round, from which ``resume`` continues. How instructions reach the clients and replies
come back is the runner's ``Transport``: in this process (``transports.simulator``) or over a
Flower grid (``transports.flower.server_app``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Protocol

from tqdm.auto import tqdm

from fedlease.algorithms import ALGORITHMS, ClientInfo, Instruction, Reply
from fedlease.algorithms.messages import Tensors
from fedlease.algorithms.validation import accept_replies
from fedlease.algorithms.wire import roundtrip
from fedlease.config import RunConfig
from fedlease.errors import CheckpointError, UploadsRejected
from fedlease.federation.checkpoint import (
    Checkpoint,
    algorithm_state,
    check_fits_model,
    checkpoint_dir,
    load_checkpoint,
    restore_algorithm_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fedlease.federation.sampling import ClientSampling
from fedlease.federation.traffic_meter import TrafficMeter
from fedlease.model.lora import AdapterLayout
from fedlease.privacy.report import over_budget, privacy_report
from fedlease.reporting.outputs import RunWriter
from fedlease.tasks import task_of


@dataclass
class RunResult:
    config: RunConfig
    tasks: dict[str, str]  # client id -> task
    history: list[dict] = field(default_factory=list)  # one entry per round
    report: dict = field(default_factory=dict)  # the algorithm's own results (clustering...)
    data: dict = field(default_factory=dict)  # per client sizes and labels (data.json)
    wall_seconds: float = 0.0
    profile_seconds: float = 0.0  # the step before round 1 (FedLEASE's embeddings, if asked)
    privacy: dict = field(default_factory=dict)  # a DP run's guarantee (privacy.json)

    @property
    def final(self) -> dict[str, dict]:
        return self.history[-1]["clients"]

    @property
    def metric(self) -> str:
        """The primary metric (``accuracy``, ``rouge_l``): a key of every client's metrics."""
        return task_of(self.config).metric

    @property
    def columns(self) -> tuple[str, ...]:
        """The metrics of the summary table and of each round's means, the primary first."""
        return task_of(self.config).columns


@dataclass
class ClientRoster:
    """What the server learns of the clients before round 1 (in the algorithm's client order)."""
    clients: list[ClientInfo]
    tasks: dict[str, str]  # client id -> task
    data: dict  # data.json: per client sizes and labels
    adapter_shapes: dict[str, tuple[int, int]]
    representation_dim: int
    hidden_size: int | None = None  # of the classification heads, if the server knows it

    @property
    def fingerprint(self) -> str:
        """What a resume must find again: the clients and their data (sizes, labels)."""
        text = json.dumps([[c.client_id, c.num_examples] for c in self.clients] + [self.data],
                          sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Transport(Protocol):
    """How the engine reaches the clients. ``local_states``: the clients' own state where the
    server holds it (the simulator; checkpointed and saved as final models), else empty (on
    Flower every node keeps its client's state). ``sampling``: the run's one sampling rule,
    which the transport's ``choose_*`` and the engine ask."""

    local_states: dict[str, Tensors]
    sampling: ClientSampling
    # whether the transport sends the tensors in ``federation.transport_precision`` itself
    # (Flower's records); else the engine rounds them as they would arrive (``sent``)
    encodes_tensors: bool

    def fingerprint(self) -> str:
        """Identifies the clients' data, as far as this runner sees it; a resume must find the
        same (saved as the checkpoint's ``clients_fingerprint``)."""

    def run_bytes(self, algorithm) -> int:
        """Disk the run's output needs at its peak (see ``estimate_run_bytes``)."""

    # clients whose local state this runner lost (a resumed Flower run's nodes): they start
    # afresh like newcomers (``ClientSampling.first_timers``)
    stateless: set[str]

    def choose_fit(self, rnd: int) -> list[str]:
        """The clients that train in round ``rnd`` (``sampling.fit_clients``), of those
        this runner reaches."""

    def reachable(self, clients: list[str]) -> list[str]:
        """Of ``clients`` (picked by ``sampling.evaluate_clients``), those this runner
        reaches now."""

    def profile(self, instructions: dict[str, Instruction]) -> dict[str, Reply]: ...

    def fit(self, rnd: int, instructions: dict[str, Instruction]) -> dict[str, Reply]: ...

    def evaluate(self, rnd: int, instructions: dict[str, Instruction]) -> dict[str, dict]: ...

    def state(self) -> dict:
        """The transport's own state a resume needs (e.g. its sampler)."""

    def restore(self, state: dict) -> None: ...

    def round_done(self, entry: dict, metric: str) -> None:
        """Called after each round's entry is recorded (logging)."""


def round_entry(rnd: int, seconds: float, replies: dict[str, Reply],
                evaluated: dict[str, dict], columns: tuple[str, ...] = ("accuracy",)) -> dict:
    """One round of the history: per client its training metrics (if it trained) and its
    evaluation metrics, and the means over the evaluated clients of the task's ``columns``
    (``mean_accuracy``; ``mean_rouge_l`` and ``mean_exact_match`` for generation). A round
    without evaluation (``federation.evaluate_every``): the training metrics of the clients
    that trained, and means of None."""
    if not evaluated:
        return {"round": rnd, "seconds": seconds, **{f"mean_{name}": None for name in columns},
                "clients": {cid: dict(reply.metrics) for cid, reply in replies.items()}}
    per_client = {cid: {**replies[cid].metrics, **metrics} if cid in replies else metrics
                  for cid, metrics in evaluated.items()}
    means = {f"mean_{name}": sum(m[name] for m in per_client.values()) / len(per_client)
             for name in columns}
    return {"round": rnd, "seconds": seconds, **means, "clients": per_client}


def client_state_bytes(adapter_shapes: dict[str, tuple[int, int]], rank: int,
                       layout: AdapterLayout, head_floats: int) -> int:
    """Size of a client state holding ``layout``'s LoRAs and router on every adapted layer,
    and the head, all float32."""
    slots = len(layout.router_slots or ())
    floats = sum(layout.num_experts * rank * (d_in + d_out) + slots * d_in
                 for d_in, d_out in adapter_shapes.values())
    return 4 * (floats + head_floats)


class _ShapesOnly:
    """What ``check_fits_model`` reads of a model, for a server that loads none."""

    def __init__(self, roster: ClientRoster):
        self._shapes, self.hidden_size = roster.adapter_shapes, roster.hidden_size

    def adapter_shapes(self):
        return self._shapes


def load_resumable(out_dir, config: RunConfig, roster: ClientRoster,
                   transport: Transport) -> Checkpoint:
    """The checkpoint in ``out_dir``, checked against this run's clients, data and model."""
    checkpoint = load_checkpoint(out_dir, config)
    ids = {c.client_id for c in roster.clients}
    saved = set(checkpoint.runner.get("clients", checkpoint.local_states))
    if saved != ids:
        raise CheckpointError(f"{out_dir}: the checkpoint's clients {sorted(saved)} are not "
                              f"the data's {sorted(ids)}")
    check_fits_model(checkpoint, _ShapesOnly(roster), config.lora.rank,
                     checkpoint_dir(out_dir))
    if checkpoint.clients_fingerprint != transport.fingerprint():
        raise CheckpointError(f"{out_dir}: the clients' examples differ from those the run "
                              f"began with (the files in data.path = {config.data.path!r} "
                              "changed?); a run resumes only on the data it began with")
    return checkpoint


def run_rounds(config: RunConfig, roster: ClientRoster, transport: Transport,
               writer: RunWriter | None, resume: bool = False, progress: bool = True,
               finish=None, start: float | None = None) -> RunResult:
    """Run ``config.federation.rounds`` rounds of ``config.federation.algorithm`` through
    ``transport``; with ``resume``, continue after the last round checkpointed in the output
    folder. ``finish(writer, algorithm, result)`` writes the final reports and models; None:
    only the reports (the clients keep their models). ``start``: when the run began (its
    ``perf_counter``), for ``wall_seconds``."""
    start = time.perf_counter() if start is None else start
    algorithm = ALGORITHMS[config.federation.algorithm](
        config, roster.clients, roster.adapter_shapes, roster.representation_dim)
    transport.sampling.check(len(roster.clients))
    result = RunResult(config, roster.tasks, data=roster.data)
    # bytes each client downloads and uploads, in the transport precision
    meter = TrafficMeter(config.federation.transport_precision)
    trained: set[str] = set()  # clients whose upload was accepted at least once
    client_files: dict[str, list[str]] = {}  # the last checkpoint's files of client states
    if resume:
        first_round, client_files = resume_from_checkpoint(writer.dir, algorithm, roster,
                                                           transport, result, trained)
    else:
        first_round = 1
        profile_start = time.perf_counter()
        run_profile_step(algorithm, transport, meter)
        result.profile_seconds = time.perf_counter() - profile_start
    if writer:
        writer.check_free_space(transport.run_bytes(algorithm))
        writer.start(config)
        writer.write_data(result.data)
    rounds = tqdm(range(first_round, config.federation.rounds + 1), desc=algorithm.name,
                  unit="round", initial=first_round - 1, total=config.federation.rounds,
                  disable=not progress)
    stopped_before = None
    for rnd in rounds:
        if config.privacy.enabled and over_budget(config, result.history):
            stopped_before = rnd  # a client's next round would spend more than its epsilon
            break
        round_start = time.perf_counter()
        entry, chosen = run_round(rnd, algorithm, transport, trained, result, writer, meter)
        if writer:
            client_files = save_round(rnd, writer, algorithm, roster, transport, trained,
                                      result, chosen, client_files, round_start)
        if entry["mean_" + result.metric] is not None:
            rounds.set_postfix({result.metric: f"{entry['mean_' + result.metric]:.3f}"})
        transport.round_done(entry, result.metric)
    result.wall_seconds = time.perf_counter() - start
    if config.privacy.enabled:
        result.privacy = privacy_report(
            config, {c.client_id: c.num_examples for c in roster.clients},
            type(algorithm).releases_embedding(config), result.history, stopped_before)
    if writer:
        if finish is None:
            writer.finish(result, {})  # the final adapters and heads stay on the clients
        else:
            finish(writer, algorithm, result)
    return result


def resume_from_checkpoint(out_dir, algorithm, roster: ClientRoster, transport: Transport,
                           result: RunResult, trained: set[str]) -> tuple[int, dict]:
    """Restore the algorithm, the RNGs, the transport, the clients that trained (into
    ``trained``) and the history from the checkpoint in ``out_dir``; the round to run next and
    the checkpoint's client files (kept by the next save for the states that do not change)."""
    checkpoint = load_resumable(out_dir, algorithm.config, roster, transport)
    restore_algorithm_state(algorithm, checkpoint.server_state)
    set_rng_state(checkpoint.rng)
    transport.local_states.update(checkpoint.local_states)
    transport.restore(checkpoint.runner.get("transport", {}))
    trained.update(checkpoint.runner.get("trained", ()))
    result.history = checkpoint.history
    result.report = algorithm.report()
    return checkpoint.round + 1, checkpoint.client_files


def run_profile_step(algorithm, transport: Transport, meter: TrafficMeter) -> None:
    """Before round 1: whatever the algorithm asks of every client once (FedLEASE's
    embeddings), checked and aggregated; nothing if it asks nothing."""
    profile = algorithm.configure_profile()
    if not profile:
        return
    precision = rounded_precision(algorithm.config, transport)
    profiled = arrived(transport.profile(sent(profile, precision)), precision)
    meter.sent(profile, profiled)
    accepted, rejected = accept_replies(algorithm, 0, profile, profiled)
    if rejected and not accepted:
        raise UploadsRejected(0, rejected, algorithm.config.federation.max_update_norm)
    algorithm.aggregate_profile(accepted)


def run_round(rnd: int, algorithm, transport: Transport, trained: set[str], result: RunResult,
              writer: RunWriter | None, meter: TrafficMeter) -> tuple[dict, list[str]]:
    """Round ``rnd``: train the chosen clients, check and aggregate their uploads (adding them
    to ``trained``), evaluate if the round does; its history entry, appended to ``result``,
    and the clients that trained (their local states changed). The entry's ``train_seconds``
    time this; its ``seconds`` too, until ``save_round`` adds the reports and the checkpoint."""
    round_start = time.perf_counter()
    precision = rounded_precision(algorithm.config, transport)
    chosen = transport.choose_fit(rnd)
    fit = algorithm.configure_fit(rnd, first_time=transport.sampling.first_timers(
        chosen, trained, transport.stateless), clients=chosen)
    replies = arrived(transport.fit(rnd, sent(fit, precision)), precision)
    meter.sent(fit, replies)
    accepted, rejected = accept_replies(algorithm, rnd, fit, replies)
    if rejected and not accepted:
        raise UploadsRejected(rnd, rejected, algorithm.config.federation.max_update_norm,
                              writer.dir if writer and result.history else None)
    trained.update(accepted)
    aggregate_start = time.perf_counter()
    algorithm.aggregate_fit(rnd, accepted)  # with FedLEASE's allocation in its round
    aggregate_seconds = time.perf_counter() - aggregate_start
    evaluated = (evaluate_round(rnd, algorithm, transport, chosen, trained, meter)
                 if evaluates(rnd, algorithm.config.federation) else {})
    entry = round_entry(rnd, time.perf_counter() - round_start, accepted, evaluated,
                        result.columns)
    entry["train_seconds"] = entry["seconds"]
    entry["aggregate_seconds"] = aggregate_seconds
    entry["rejected"] = rejected
    entry["traffic"] = meter.round_total()
    result.history.append(entry)
    result.report = algorithm.report()
    return entry, chosen


def evaluates(rnd: int, federation) -> bool:
    """Whether round ``rnd`` ends with an evaluation: every ``evaluate_every``-th, and the last."""
    return rnd % federation.evaluate_every == 0 or rnd == federation.rounds


def evaluate_round(rnd: int, algorithm, transport: Transport, chosen: list[str],
                   trained: set[str], meter: TrafficMeter) -> dict[str, dict]:
    """The evaluation metrics of the clients the transport picks, after round ``rnd``."""
    sampling = transport.sampling
    picked = transport.reachable(sampling.evaluate_clients(rnd, list(algorithm.client_index),
                                                           chosen, trained))
    newcomers = sampling.first_timers(picked, trained, transport.stateless)
    new = set(newcomers)
    evaluate = algorithm.configure_evaluate(rnd, [c for c in picked if c not in new])
    # never accepted: evaluated by the newcomer protocol, every algorithm the same (base.py)
    steps = algorithm.config.federation.newcomer_steps
    evaluate.update({cid: algorithm.newcomer(steps, client_id=cid) for cid in newcomers})
    asked = {cid: evaluate[cid] for cid in picked}
    precision = rounded_precision(algorithm.config, transport)
    evaluated = transport.evaluate(rnd, sent(asked, precision))
    meter.sent(asked, {})
    if not evaluated:
        raise RuntimeError(f"round {rnd}: no client answered; see the warnings above")
    return evaluated


def rounded_precision(config: RunConfig, transport: Transport) -> str:
    """The precision the engine rounds messages to: the run's, unless the transport's own
    encoding does it on the wire (rounding twice could move an int8 scale by one ulp)."""
    return "float32" if transport.encodes_tensors else config.federation.transport_precision


def sent(instructions: dict[str, Instruction], precision: str) -> dict[str, Instruction]:
    """The instructions as their clients receive them: tensors in the transport precision."""
    if precision == "float32":
        return instructions
    return {cid: dataclasses.replace(ins, arrays=roundtrip(ins.arrays, precision))
            for cid, ins in instructions.items()}


def arrived(replies: dict, precision: str) -> dict:
    """The replies as the server receives them: tensors in the transport precision (a reply
    that could not be read, ``MalformedReply``, as it is)."""
    if precision == "float32":
        return replies
    return {cid: dataclasses.replace(r, arrays=roundtrip(r.arrays, precision))
            if isinstance(r, Reply) else r for cid, r in replies.items()}


def save_round(rnd: int, writer: RunWriter, algorithm, roster: ClientRoster,
               transport: Transport, trained: set[str], result: RunResult,
               changed: list[str], client_files: dict[str, list[str]],
               round_start: float) -> dict[str, list[str]]:
    """After round ``rnd``: its reports, the client states the algorithm keeps from it
    (``Algorithm.warmup_states``), the checkpoint a resume continues from (writing the states
    of ``changed``, the clients that trained, and keeping ``client_files`` for the others),
    then the round's line of metrics, its ``seconds`` covering all of this. Returns the
    checkpoint's client files."""
    writer.write_reports(result)
    writer.write_warmup_adapters(algorithm.warmup_states(rnd, transport.local_states))
    runner = {"clients": [c.client_id for c in roster.clients],
              "trained": sorted(trained), "transport": transport.state()}
    client_files = save_checkpoint(
        writer.dir, Checkpoint(rnd, algorithm_state(algorithm), transport.local_states,
                               result.history, rng_state(), transport.fingerprint(), runner,
                               client_files),
        algorithm.config, changed)
    result.history[-1]["seconds"] = time.perf_counter() - round_start
    writer.append_rounds(result)
    return client_files
