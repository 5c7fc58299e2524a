"""The Flower ServerApp: the library's ``Algorithm`` drives every round, Flower carries the
messages.

One explicit exchange per step: a query round learns who the clients are (id, task, number of
training examples, adapter shapes); a ``query.profile`` round collects what the algorithm asks
of every client before training (FedLEASE's embeddings), if anything; then per round
``configure_fit`` -> one train message per sampled client (each its own tensors and layout, as
FedLEASE needs) -> ``aggregate_fit`` on the replies that arrived -> ``configure_evaluate`` ->
evaluate messages. A client that errors or does not answer within ``round-timeout`` is left out
of that step; the run goes on with the rest. Results go to ``output.dir`` like the in-process
simulator's (config, metrics.json, clustering.json, summary, plots); the clients' final adapters
and heads stay on their nodes.
"""

from __future__ import annotations

import json
import random
import time
from logging import INFO, WARNING

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedlease.algorithms import ALGORITHMS, ClientInfo, Instruction, Reply
from fedlease.algorithms.validation import accept_replies
from fedlease.config import RunConfig
from fedlease.reporting.outputs import RunWriter
from fedlease.runners.flower.records import instruction_content, read_metrics, read_reply
from fedlease.runners.flower.settings import FlowerSettings, read_run_config
from fedlease.runners.simulator import RunResult, round_entry

app = ServerApp()
PROFILE_MESSAGE = f"{MessageType.QUERY}.profile"  # handled by the ClientApp's profile()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config, settings = read_run_config(context.run_config)
    run_federation(grid, config, settings)


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
    """Client of each node, in the order the simulator uses (partition, then id); shapes."""
    replies = exchange(grid, MessageType.QUERY, {n: RecordDict() for n in nodes},
                       settings.round_timeout)
    described = sorted(replies.items(), key=lambda item: (int(item[1]["info"]["order"]),
                                                          str(item[1]["info"]["client-id"])))
    node_of, infos, tasks, shapes, dims, data = {}, [], {}, set(), set(), {}
    for node, content in described:
        info = content["info"]
        cid = str(info["client-id"])
        if cid in node_of:
            raise RuntimeError(f"nodes {node_of[cid]} and {node} both hold client {cid!r}: give "
                               "each SuperNode its own partition-id or data-path")
        node_of[cid] = node
        infos.append(ClientInfo(cid, int(content["metrics"]["num-examples"])))
        tasks[cid] = str(info["task"])
        data[cid] = json.loads(str(info["data"]))
        shapes.add(str(info["adapter-shapes"]))
        dims.add(int(info["representation-dim"]))
        size = int(info["federation-size"])
    if not infos:
        raise RuntimeError("no node described its client; see the warnings above")
    if len(shapes) > 1 or len(dims) > 1:
        raise RuntimeError("the nodes load different models (adapter shapes differ); give "
                           "them the same [model] and [lora] config")
    if len(infos) < size:
        log(WARNING, "the data config defines %s clients but only %s nodes answered; the "
            "federation is these %s", size, len(infos), len(infos))
    adapter_shapes = {k: tuple(v) for k, v in json.loads(shapes.pop()).items()}
    return node_of, infos, tasks, adapter_shapes, dims.pop(), {"clients": data}


def sample(ids: list[str], fraction: float, minimum: int, rng: random.Random) -> list[str]:
    """``fraction`` of ``ids`` (at least ``minimum``, at most all), in their original order."""
    size = min(len(ids), max(int(len(ids) * fraction), minimum))
    chosen = set(rng.sample(ids, size))
    return [cid for cid in ids if cid in chosen]


def run_federation(grid: Grid, config: RunConfig, settings: FlowerSettings) -> RunResult:
    start = time.perf_counter()
    writer = RunWriter(config.output.dir)
    writer.start(config)
    node_of, infos, tasks, adapter_shapes, representation_dim, data = query_clients(
        grid, wait_for_nodes(grid, settings), settings)
    writer.write_data(data)
    log(INFO, "federation: %s clients on %s nodes", len(infos), len(node_of))
    algorithm = ALGORITHMS[config.federation.algorithm](config, infos, adapter_shapes,
                                                        representation_dim)
    order = [c.client_id for c in infos]
    result = RunResult(config, tasks, data=data)
    rng = random.Random(config.federation.seed)
    trained: set[str] = set()

    def send(message_type: str, instructions: dict[str, Instruction]) -> dict[str, RecordDict]:
        client_of = {node_of[cid]: cid for cid in instructions}
        received = exchange(grid, message_type,
                            {node_of[cid]: instruction_content(cid, ins)
                             for cid, ins in instructions.items()}, settings.round_timeout)
        # in the algorithm's client order, whatever the arrival order: sums stay reproducible
        by_client = {client_of[node]: content for node, content in received.items()}
        return {cid: by_client[cid] for cid in order if cid in by_client}

    profile = algorithm.configure_profile()
    if profile:
        online = set(grid.get_node_ids())
        asked = {cid: ins for cid, ins in profile.items() if node_of[cid] in online}
        replies = {cid: read_reply(content)
                   for cid, content in send(PROFILE_MESSAGE, asked).items()}
        accepted, _ = accept_replies(algorithm, 0, profile, replies)
        algorithm.aggregate_profile(accepted)

    for rnd in range(1, config.federation.rounds + 1):
        round_start = time.perf_counter()
        online = set(grid.get_node_ids())
        available = [cid for cid in order if node_of[cid] in online]
        chosen = sample(available, settings.fraction_train, settings.min_train_clients, rng)
        log(INFO, "round %s: training %s of %s available clients", rnd, len(chosen),
            len(available))
        fit = algorithm.configure_fit(rnd, first_time=[c for c in chosen if c not in trained])
        replies: dict[str, Reply] = {
            cid: read_reply(content)
            for cid, content in send(MessageType.TRAIN, {c: fit[c] for c in chosen}).items()}
        accepted, rejected = accept_replies(algorithm, rnd, fit, replies)
        trained.update(accepted)
        algorithm.aggregate_fit(rnd, accepted)

        evaluable = [cid for cid in available if cid in trained]
        chosen = sample(evaluable, settings.fraction_evaluate, 1, rng)
        evaluate = algorithm.configure_evaluate(rnd)
        evaluated = {cid: read_metrics(content) for cid, content in
                     send(MessageType.EVALUATE, {c: evaluate[c] for c in chosen}).items()}
        if not evaluated:
            raise RuntimeError(f"round {rnd}: no client answered; see the warnings above")
        entry = round_entry(rnd, time.perf_counter() - round_start, accepted, evaluated,
                            result.metric)
        entry["rejected"] = rejected
        result.history.append(entry)
        result.report = algorithm.report()
        writer.write_round(result)
        log(INFO, "round %s: mean %s %.4f over %s clients", rnd, result.metric,
            entry["mean_" + result.metric], len(evaluated))
    result.wall_seconds = time.perf_counter() - start
    writer.finish(result, {})  # the final adapters and heads stay on the clients' nodes
    return result
