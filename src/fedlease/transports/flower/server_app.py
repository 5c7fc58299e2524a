"""The Flower ServerApp: the library's ``Algorithm`` drives every round, Flower carries the
messages.

One explicit exchange per step: a query round learns who the clients are (id, task, number of
training examples, adapter shapes); a ``query.profile`` round collects what the algorithm asks
of every client before training (FedLEASE's embeddings), if anything; then per round
``configure_fit`` -> one train message per sampled client (each its own tensors and layout, as
FedLEASE needs) -> ``aggregate_fit`` on the replies that arrived -> ``configure_evaluate`` ->
evaluate messages. A client that errors or does not answer within ``round-timeout`` is left out
of that step; the run goes on with the rest. The rounds are the engine's (``federation.engine``),
this module is its Flower ``Transport``. Results go to ``output.dir`` like the in-process
simulator's (config, metrics.json, clustering.json, summary, plots), with the server's
checkpoint after every round: a ServerApp started again with ``resume = true`` continues after
the last finished round (a node that lost its client's local state, as in a new Flower run,
gets the initial tensors again; docs/flower.md). The clients' adapters and heads stay on their
nodes.

A reply that cannot be read (a record missing, a non-integer example count, extra fields that
are not JSON) is a rejected upload like any other (``records.read_reply``); an evaluation
without the task's metrics is left out: a node that sends garbage never stops the run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from logging import INFO, WARNING

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedlease.algorithms import ClientInfo, Instruction, Reply
from fedlease.config import RunConfig
from fedlease.errors import ConfigError, ProtocolError
from fedlease.federation.engine import ClientRoster, RunResult, client_state_bytes, run_rounds
from fedlease.federation.sampling import ClientSampling
from fedlease.reporting.outputs import RunWriter, estimate_run_bytes
from fedlease.tasks import task_of
from fedlease.transports.flower.records import (
    instruction_content,
    read_description,
    read_metrics,
    read_reply,
)
from fedlease.transports.flower.settings import FlowerSettings, read_run_config

app = ServerApp()
PROFILE_MESSAGE = f"{MessageType.QUERY}.profile"  # handled by the ClientApp's profile()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config, settings = read_run_config(context.run_config)
    run_on_grid(grid, config, settings)


def wait_for_nodes(grid: Grid, settings: FlowerSettings) -> list[int]:
    deadline = time.monotonic() + settings.connect_timeout
    while len(nodes := sorted(grid.get_node_ids())) < settings.min_available_clients:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(nodes)} node(s) connected within connect-timeout = "
                               f"{settings.connect_timeout} s; min-available-clients = "
                               f"{settings.min_available_clients}")
        time.sleep(0.5)
    return nodes


def exchange(grid: Grid, message_type: str, contents: dict[int, RecordDict],
             timeout: float) -> dict[int, RecordDict]:
    """Send one message per node, return the contents of the replies that arrived in time."""
    messages = [Message(content=content, dst_node_id=node, message_type=message_type)
                for node, content in contents.items()]
    received = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log(WARNING, "node %s: %s failed: %s", node, message_type, reply.error.reason)
        else:
            received[node] = reply.content
    for node in sorted(set(contents) - set(received)):
        log(WARNING, "node %s: no %s reply (error, or none within %s s); going on without it",
            node, message_type, timeout)
    return received


def query_clients(grid: Grid, nodes: list[int], settings: FlowerSettings):
    """Client of each node, in the order the simulator uses (partition, then id); shapes; the
    clients whose node holds no local state of theirs (a new Flower run: the state of a
    resumed run's nodes is gone)."""
    replies = exchange(grid, MessageType.QUERY, {n: RecordDict() for n in nodes},
                       settings.round_timeout)
    described = {}
    for node, content in replies.items():
        try:
            described[node] = read_description(content)
        except ProtocolError as err:
            log(WARNING, "node %s: left out, its description cannot be read: %s", node, err)
    node_of, infos, tasks, shapes, dims, data, stateless = {}, [], {}, set(), set(), {}, set()
    for node, info in sorted(described.items(), key=lambda item: (item[1].order,
                                                                  item[1].client_id)):
        cid = info.client_id
        if cid in node_of:
            raise RuntimeError(f"nodes {node_of[cid]} and {node} both hold client {cid!r}: give "
                               "each SuperNode its own partition-id or data-path")
        node_of[cid] = node
        infos.append(ClientInfo(cid, info.num_examples))
        tasks[cid] = info.task
        data[cid] = info.data
        shapes.add(info.adapter_shapes)
        dims.add(info.representation_dim)
        if not info.has_state:
            stateless.add(cid)
        size = info.federation_size
    if not infos:
        raise RuntimeError("no node described its client; see the warnings above")
    if len(shapes) > 1 or len(dims) > 1:
        raise RuntimeError("the nodes load different models (adapter shapes differ); give "
                           "them the same [model] and [lora] config")
    if len(infos) < size:
        log(WARNING, "the data config defines %s clients but only %s nodes answered; the "
            "federation is these %s", size, len(infos), len(infos))
    adapter_shapes = {k: tuple(v) for k, v in json.loads(shapes.pop()).items()}
    return node_of, infos, tasks, adapter_shapes, dims.pop(), {"clients": data}, stateless


def with_fraction_train(config: RunConfig, settings: FlowerSettings,
                        num_clients: int) -> RunConfig:
    """``fraction-train`` < 1 is ``federation.clients_per_round`` given as a share of the
    federation: ``max(min-train-clients, int(num_clients * fraction-train))`` clients (at most
    all), drawn by the one sampling rule. ``read_run_config`` refuses both at once."""
    if settings.fraction_train >= 1:
        return config
    per_round = min(num_clients, max(int(num_clients * settings.fraction_train),
                                     settings.min_train_clients))
    return dataclasses.replace(config, federation=dataclasses.replace(
        config.federation, clients_per_round=per_round))


class GridTransport:
    """The engine's messages over a Flower grid: one message per client and step, to the node
    that holds it; the clients of each round by the one sampling rule (federation/sampling.py,
    ``federation.clients_per_round`` or ``fraction-train``), those of them that are connected;
    a client that does not answer is left out of that step."""

    encodes_tensors = True  # the records send them in the transport precision

    def __init__(self, grid: Grid, settings: FlowerSettings, config: RunConfig,
                 roster: ClientRoster, node_of: dict[str, int], stateless: set[str]):
        self.grid, self.settings, self.config = grid, settings, config
        # clients whose node lost what they kept locally (resumed in a new Flower run): their
        # next train message carries the initial tensors too, as a client's first one does
        self.stateless = set(stateless)
        self.roster, self.node_of = roster, node_of
        self.local_states: dict = {}  # every node keeps its own client's state
        self.order = [c.client_id for c in roster.clients]
        self.sampling = ClientSampling.of(config)

    def fingerprint(self) -> str:
        return self.roster.fingerprint

    def run_bytes(self, algorithm) -> int:
        """The server's checkpoints and reports; the clients' states are on their nodes."""
        server = self.config.federation.max_experts * client_state_bytes(
            self.roster.adapter_shapes, self.config.lora.rank,
            algorithm.client_layout_bound(), 0)
        return estimate_run_bytes(0, server, len(self.order), self.config.federation.rounds)

    def online(self) -> list[str]:
        nodes = set(self.grid.get_node_ids())
        return [cid for cid in self.order if self.node_of[cid] in nodes]

    def choose_fit(self, rnd: int) -> list[str]:
        """The clients of ``federation.clients_per_round``'s rule (federation/sampling.py, as in
        the simulator) whose node is connected."""
        available = self.online()
        online = set(available)
        chosen = [cid for cid in self.sampling.fit_clients(self.order, rnd) if cid in online]
        log(INFO, "round %s: training %s of %s available clients", rnd, len(chosen),
            len(available))
        return chosen

    def reachable(self, clients: list[str]) -> list[str]:
        """Those whose node is connected now (the rule picked them: ``ClientSampling``, with
        ``fraction-evaluate`` as ``federation.fraction_evaluate``)."""
        online = set(self.online())
        return [cid for cid in clients if cid in online]

    def send(self, message_type: str,
             instructions: dict[str, Instruction]) -> dict[str, RecordDict]:
        client_of = {self.node_of[cid]: cid for cid in instructions}
        received = exchange(self.grid, message_type,
                            {self.node_of[cid]: instruction_content(
                                cid, ins, self.config.federation.transport_precision)
                             for cid, ins in instructions.items()}, self.settings.round_timeout)
        # in the algorithm's client order, whatever the arrival order: sums stay reproducible
        by_client = {client_of[node]: content for node, content in received.items()}
        return {cid: by_client[cid] for cid in self.order if cid in by_client}

    def profile(self, instructions: dict[str, Instruction]) -> dict[str, Reply]:
        online = set(self.online())
        asked = {cid: ins for cid, ins in instructions.items() if cid in online}
        return {cid: read_reply(content)
                for cid, content in self.send(PROFILE_MESSAGE, asked).items()}

    def fit(self, rnd: int, instructions: dict[str, Instruction]) -> dict[str, Reply]:
        replies = {cid: read_reply(content)
                   for cid, content in self.send(MessageType.TRAIN, instructions).items()}
        self.stateless -= set(replies)  # they keep a local state from now on
        return replies

    def evaluate(self, rnd: int, instructions: dict[str, Instruction]) -> dict[str, dict]:
        """The metrics of every client that answered with the task's metrics; a malformed
        answer is left out, like a node that did not answer."""
        columns = task_of(self.config).columns
        evaluated = {}
        for cid, content in self.send(MessageType.EVALUATE, instructions).items():
            try:
                evaluated[cid] = read_metrics(content, columns)
            except ProtocolError as err:
                log(WARNING, "round %s: left out the evaluation of client %r: %s", rnd, cid,
                    err)
        return evaluated

    def state(self) -> dict:
        """Nothing: the rules of federation/sampling.py draw from (seed, round) alone."""
        return {}

    def restore(self, state: dict) -> None:
        pass

    def round_done(self, entry: dict, metric: str) -> None:
        if entry["mean_" + metric] is None:
            log(INFO, "round %s: trained %s clients (not evaluated)", entry["round"],
                len(entry["clients"]))
            return
        log(INFO, "round %s: mean %s %.4f over %s clients", entry["round"], metric,
            entry["mean_" + metric], len(entry["clients"]))


def run_on_grid(grid: Grid, config: RunConfig, settings: FlowerSettings) -> RunResult:
    """Run the configured rounds on the grid's nodes; with ``settings.resume``, continue the
    run checkpointed in ``output.dir`` (the nodes must still hold their clients' state)."""
    start = time.perf_counter()
    if config.attack.clients:
        raise ConfigError(f"attack.clients = {config.attack.clients!r}: the attack harness is "
                          "an experiment of the simulator (fedlease run); expected [] on Flower")
    writer = RunWriter(config.output.dir, resume=settings.resume)
    writer.check()
    node_of, infos, tasks, adapter_shapes, representation_dim, data, stateless = query_clients(
        grid, wait_for_nodes(grid, settings), settings)
    log(INFO, "federation: %s clients on %s nodes", len(infos), len(node_of))
    roster = ClientRoster(infos, tasks, data, adapter_shapes, representation_dim)
    config = with_fraction_train(config, settings, len(infos))
    if settings.fraction_evaluate < 1:  # the one evaluation rule's share (federation/sampling.py)
        config = dataclasses.replace(config, federation=dataclasses.replace(
            config.federation, fraction_evaluate=settings.fraction_evaluate))
    transport = GridTransport(grid, settings, config, roster, node_of,
                              stateless if settings.resume else set())
    return run_rounds(config, roster, transport, writer, settings.resume, progress=False,
                      start=start)
