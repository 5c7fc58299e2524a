"""A Flower ``Grid`` that hands each message straight to the ClientApp of its node, in this
process: the ServerApp and ClientApp code, the records and ``context.state`` without Flower's
processes, so the whole message flow is tested in seconds."""

from __future__ import annotations

from contextlib import contextmanager

from flwr.app import Context, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedlease.transports.flower.client_app import app as client_app


@contextmanager
def task_identity():
    """Flower stamps messages with the identity of the running task; set one for this process."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class LoopbackGrid(Grid):
    def __init__(self, run_config: dict, num_nodes: int, silent_after: dict[int, int] = ()):
        """``silent_after[node] = k``: that node answers ``k`` train messages, then nothing
        (it is still listed as connected, like a SuperNode killed between two heartbeats)."""
        self.run_config = run_config
        self.contexts = {
            node: Context(run_id=1, node_id=node, state=RecordDict(), run_config=run_config,
                          node_config={"partition-id": node - 1, "num-partitions": num_nodes})
            for node in range(1, num_nodes + 1)
        }
        self.silent_after = dict(silent_after)
        self.trained = dict.fromkeys(self.contexts, 0)
        self.timeouts: list[float | None] = []

    def set_run(self, run_id):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if msg.metadata.message_type == "train":
                self.trained[node] += 1
                if self.trained[node] > self.silent_after.get(node, float("inf")):
                    self.silent_after[node] = -1  # silent for good
            if self.silent_after.get(node) == -1:
                continue
            replies.append(client_app(msg, self.contexts[node]))
        return replies
