"""IFCA (Ghosh et al., 2020) with LoRA: K cluster LoRAs on the server (K =
``federation.max_experts``). Every round each client computes the loss of every cluster LoRA (with
its own head) on its training data, picks the lowest, trains that LoRA and uploads it with the
cluster it picked; the server averages the uploads per cluster (FedAvg, weighted by training
examples, or the rule ``federation.aggregation`` names). A client is evaluated with the
cluster it picked in the latest round.

The K LoRAs start from different seeded A matrices and B = 0, so in the first round every
candidate computes the same function and the losses tie exactly; ties are broken by a seeded
random choice per client, which spreads the clients over the clusters (IFCA's random init has
the same role).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from fedlease.algorithms.base import Algorithm, AlgorithmClient, with_head
from fedlease.algorithms.messages import Instruction, Reply, Tensors, UploadSpec
from fedlease.errors import RejectedUpload
from fedlease.model.adapted import ADAPTER_PREFIX
from fedlease.model.lora import AdapterLayout

LORA_PARTS = ["lora_A", "lora_B"]


@dataclass(frozen=True)
class AssignedCluster:
    """Instruction field: the cluster the client picked in its latest round, the one it is
    evaluated with (None before it has trained)."""

    cluster: int | None


@dataclass(frozen=True)
class ChosenCluster:
    """Reply field: the cluster whose LoRA the client trained and uploads."""

    cluster: int


class IFCALoRAClient(AlgorithmClient):
    @staticmethod
    def cluster_lora(arrays: Tensors, cluster: int) -> Tensors:
        """Cluster ``cluster``'s LoRA out of the stacked download, as a one-expert state."""
        return {key: value[cluster : cluster + 1] for key, value in arrays.items()
                if key.startswith(ADAPTER_PREFIX)}

    @classmethod
    def install(cls, ins: Instruction, local_state: Tensors) -> Tensors:
        return {**local_state, **cls.cluster_lora(ins.arrays, ins.extra.cluster)}

    @classmethod
    def pick_cluster(cls, ins: Instruction, state: Tensors, trainer) -> tuple[int, list, list]:
        """Every cluster's loss on the training data: the lowest's index, the candidate
        states (``state`` with each cluster's LoRA) and the losses."""
        num_clusters = next(iter(ins.arrays.values())).shape[0]
        candidates = [{**state, **cls.cluster_lora(ins.arrays, c)} for c in range(num_clusters)]
        losses = [trainer.train_loss(s, ins.layout) for s in candidates]
        return pick_lowest(losses, torch.Generator().manual_seed(ins.seed)), candidates, losses

    @classmethod
    def fit(cls, ins: Instruction, local_state: Tensors, trainer) -> tuple[Reply, Tensors]:
        """Every cluster's loss on the training data, then train and upload the lowest."""
        best, candidates, _ = cls.pick_cluster(ins, with_head(local_state, ins, trainer),
                                               trainer)
        reply, new_state = cls.train_and_upload(candidates[best], ins, trainer)
        reply.extra = ChosenCluster(best)  # the index only: the losses stay on the client
        return reply, new_state

    @classmethod
    def start_state(cls, ins: Instruction, trainer) -> Tensors:
        """A newcomer picks its cluster as its first training round would: the lowest loss
        (with the common head init) on its training data."""
        if ins.extra.cluster is not None:
            return super().start_state(ins, trainer)
        best, candidates, _ = cls.pick_cluster(ins, with_head({}, ins, trainer), trainer)
        return candidates[best]

    @classmethod
    def evaluate(cls, ins: Instruction, local_state: Tensors, trainer) -> dict:
        """A client that never trained (no cluster yet) is evaluated as a newcomer starts."""
        if ins.extra.cluster is None and ins.newcomer_steps is None:
            return trainer.evaluate(cls.start_state(ins, trainer), ins.layout)
        return super().evaluate(ins, local_state, trainer)


class IFCALoRA(Algorithm):
    name = "ifca-lora"
    client = IFCALoRAClient
    instruction_fields = AssignedCluster
    reply_fields = ChosenCluster
    state_fields = ("clusters", "cluster_of")

    def __init__(self, config, clients, adapter_shapes, representation_dim: int = 0):
        super().__init__(config, clients, adapter_shapes, representation_dim)
        self.num_clusters = config.federation.max_experts
        inits = [self.init_lora_state(seed_offset=c) for c in range(self.num_clusters)]
        # cluster LoRAs stacked on the expert axis: [K, r, d_in] and [K, d_out, r] per layer
        self.clusters: Tensors = {key: torch.cat([init[key] for init in inits])
                                  for key in inits[0]}
        self.cluster_of: dict[str, int] = {}

    def download(self, after_round: int, clients: Collection[str] | None = None
                 ) -> dict[str, Instruction]:
        return {cid: Instruction(dict(self.clusters), AdapterLayout(),
                                 extra=AssignedCluster(self.cluster_of.get(cid)))
                for cid in self.client_ids(clients)}

    def upload_spec(self, rnd: int, client_id: str) -> UploadSpec | None:
        return UploadSpec((0,), tuple(LORA_PARTS))

    def check_reply_fields(self, ins: Instruction, reply: Reply) -> None:
        """The cluster the client trained: one of the K."""
        if not 0 <= reply.extra.cluster < self.num_clusters:
            raise RejectedUpload(f"cluster = {reply.extra.cluster}: expected the cluster it "
                                 f"trained, an integer in 0..{self.num_clusters - 1}")

    def aggregate_fit(self, rnd: int, replies: dict[str, Reply]) -> None:
        for cid, reply in replies.items():
            self.cluster_of[cid] = reply.extra.cluster
        for c in range(self.num_clusters):
            group = [reply for cid, reply in replies.items() if self.cluster_of[cid] == c]
            if not group:
                continue  # nobody picked this cluster: it stays as it was
            for key, mean in self.aggregate_replies(group).items():
                self.clusters[key] = self.clusters[key].clone()
                self.clusters[key][c] = mean[0]

    def newcomer_start(self, signal: Reply | None, client_id: str | None) -> Instruction:
        """Every cluster LoRA; the newcomer picks one by its loss (``start_state``)."""
        return Instruction(dict(self.clusters), AdapterLayout(), extra=AssignedCluster(None))

    def server_experts(self) -> Tensors:
        return dict(self.clusters)

    def report(self) -> dict:
        if not self.cluster_of:
            return {}
        return {"clients": [c.client_id for c in self.clients], "assignment": self.cluster_of,
                "num_experts": self.num_clusters}


def pick_lowest(losses: list[float], generator: torch.Generator) -> int:
    """The index of the lowest loss; exact ties broken at random."""
    lowest = min(losses)
    ties = [i for i, loss in enumerate(losses) if loss == lowest]
    return ties[int(torch.randint(len(ties), (1,), generator=generator))]
