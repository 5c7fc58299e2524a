"""IFCA (Ghosh et al., 2020) with LoRA: K cluster LoRAs on the server (K =
``federation.max_experts``). Every round each client computes the loss of every cluster LoRA (with
its own head) on its training data, picks the lowest, trains that LoRA and uploads it with the
cluster it picked; the server averages the uploads per cluster (FedAvg, weighted by training
examples). A client is evaluated with the cluster it picked in the latest round.

The K LoRAs start from different seeded A matrices and B = 0, so in the first round every
candidate computes the same function and the losses tie exactly; ties are broken by a seeded
random choice per client, which spreads the clients over the clusters (IFCA's random init has
the same role).
"""

from __future__ import annotations

import torch

from fedlease.algorithms.base import Algorithm, Instruction, Reply, Tensors, fedavg, with_head
from fedlease.model.lora import AdapterLayout
from fedlease.model.model import ADAPTER_PREFIX

LORA_PARTS = ["lora_A", "lora_B"]


class IFCALoRA(Algorithm):
    name = "ifca-lora"
    state_fields = ("clusters", "cluster_of")

    def __init__(self, config, clients, adapter_shapes, representation_dim: int = 0):
        super().__init__(config, clients, adapter_shapes, representation_dim)
        self.num_clusters = config.federation.max_experts
        inits = [self.init_lora_state(seed_offset=c) for c in range(self.num_clusters)]
        # cluster LoRAs stacked on the expert axis: [K, r, d_in] and [K, d_out, r] per layer
        self.clusters: Tensors = {key: torch.cat([init[key] for init in inits])
                                  for key in inits[0]}
        self.cluster_of: dict[str, int] = {}

    def download(self, after_round: int) -> dict[str, Instruction]:
        layout = AdapterLayout().to_config()
        return {
            c.client_id: Instruction(dict(self.clusters), {
                "layout": layout, "cluster": self.cluster_of.get(c.client_id)})
            for c in self.clients
        }

    def upload_spec(self, rnd: int, client_id: str) -> dict | None:
        return {"experts": [0], "parts": LORA_PARTS}

    def aggregate_fit(self, rnd: int, replies: dict[str, Reply]) -> None:
        for cid, reply in replies.items():
            self.cluster_of[cid] = int(reply.metrics["cluster"])
        for c in range(self.num_clusters):
            group = [reply for cid, reply in replies.items() if self.cluster_of[cid] == c]
            if not group:
                continue  # nobody picked this cluster: it stays as it was
            for key, mean in fedavg(group).items():
                self.clusters[key] = self.clusters[key].clone()
                self.clusters[key][c] = mean[0]

    def server_experts(self) -> Tensors:
        return dict(self.clusters)

    def report(self) -> dict:
        if not self.cluster_of:
            return {}
        return {"clients": [c.client_id for c in self.clients], "assignment": self.cluster_of,
                "num_experts": self.num_clusters}

    # -- client side --------------------------------------------------------------------

    @staticmethod
    def cluster_lora(arrays: Tensors, cluster: int) -> Tensors:
        """Cluster ``cluster``'s LoRA out of the stacked download, as a one-expert state."""
        return {key: value[cluster : cluster + 1] for key, value in arrays.items()
                if key.startswith(ADAPTER_PREFIX)}

    @classmethod
    def install(cls, ins: Instruction, local_state: Tensors) -> Tensors:
        return {**local_state, **cls.cluster_lora(ins.arrays, ins.config["cluster"])}

    @classmethod
    def client_fit(cls, ins: Instruction, local_state: Tensors, trainer) -> tuple[Reply, Tensors]:
        state = with_head(local_state, ins, trainer)
        layout = AdapterLayout.from_config(ins.config["layout"])
        num_clusters = next(iter(ins.arrays.values())).shape[0]
        candidates = [{**state, **cls.cluster_lora(ins.arrays, c)} for c in range(num_clusters)]
        losses = [trainer.evaluate(s, layout, on="train")["loss"] for s in candidates]
        best = pick_lowest(losses, torch.Generator().manual_seed(ins.config["seed"]))
        reply, new_state = cls.train_and_upload(candidates[best], ins, trainer)
        reply.metrics["cluster"] = best
        reply.metrics["cluster_loss"] = losses[best]
        return reply, new_state


def pick_lowest(losses: list[float], generator: torch.Generator) -> int:
    """The index of the lowest loss; exact ties broken at random."""
    lowest = min(losses)
    ties = [i for i, loss in enumerate(losses) if loss == lowest]
    return ties[int(torch.randint(len(ties), (1,), generator=generator))]
