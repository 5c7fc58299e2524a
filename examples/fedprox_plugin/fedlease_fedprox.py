"""FedProx (Li et al., MLSys 2020) for fedlease: FedIT's FedAvg of the whole LoRA, with the
proximal term ``mu / 2 * ||w - w_global||^2`` added to every local step's loss, which keeps
each client's update near the model it started the round from. Written against fedlease's
public extension API only (docs/extending.md): an ``Algorithm`` subclass, its client side's
``local_loss`` hook, and an instruction field that carries ``mu`` to the clients (so a Flower
client, which has no config of its own, gets it too)."""

from __future__ import annotations

from dataclasses import dataclass

from fedlease.algorithms.base import Instruction
from fedlease.algorithms.fedit import FedIT


@dataclass
class ProximalWeight:
    """What the server adds to each instruction: the weight of the proximal term."""

    mu: float


class FedProxClient(FedIT.client):
    """FedIT's client side (it splices the averaged LoRA into its state) with the term."""

    @classmethod
    def local_loss(cls, ins: Instruction):
        mu = ins.extra.mu

        def proximal(trainable, start):
            # the shared LoRA only: the task head is each client's own, never averaged
            return mu / 2 * sum(((p - start[name]) ** 2).sum()
                                for name, p in trainable.items() if not name.startswith("head."))
        return proximal


class FedProx(FedIT):
    """FedProx: FedAvg of the LoRA with a proximal term (mu = 0.01) in the local update."""

    name = "fedprox"
    client = FedProxClient
    instruction_fields = ProximalWeight
    mu = 0.01  # subclass with another name and mu for another weight

    def download(self, after_round: int, clients=None) -> dict[str, Instruction]:
        instructions = super().download(after_round, clients)
        for ins in instructions.values():
            ins.extra = ProximalWeight(self.mu)
        return instructions
