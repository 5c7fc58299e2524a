"""FedALT (Bian et al., AAAI 2026): every client keeps training its own LoRA and never has it
overwritten by an average; what it learns from the others comes as a frozen "rest of world"
(RoW) LoRA beside it, and a trained per-token mixer weighs the two.

Every adapted layer of a client holds two LoRAs: expert 0, its Individual LoRA (trains, stays
on the client between rounds), and expert 1, the RoW LoRA (frozen). The mixer is a router with
one slot per LoRA, both kept: ``y = W0 x + (alpha/r) (w_0(x) B_0 A_0 + w_1(x) B_1 A_1) x`` with
``w(x) = softmax(M x)`` per token; ``M`` trains with the Individual LoRA and never leaves the
client. After each round a client uploads its Individual LoRA (A and B); the server keeps each
client's latest upload and sends client ``i`` the average of the OTHER clients' latest
Individual LoRAs (A and B averaged separately, weighted by training examples, or combined by the
rule ``federation.aggregation`` names) as its next RoW LoRA. In round 1 nobody has trained yet:
the RoW LoRA starts at B = 0 (it adds nothing) and every client starts from the same seeded
Individual LoRA and mixer.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from fedlease.algorithms.base import Algorithm
from fedlease.algorithms.messages import Instruction, Reply, Tensors, UploadSpec
from fedlease.algorithms.shared_lora import SharedLoRAClient
from fedlease.model.adapted import ADAPTER_PREFIX
from fedlease.model.lora import AdapterLayout, init_router

INDIVIDUAL, REST_OF_WORLD = 0, 1
LORA_PARTS = ("lora_A", "lora_B")


class FedALTClient(SharedLoRAClient):
    """What comes down after round 1 is the RoW LoRA alone: spliced in as expert 1, the
    Individual LoRA and the mixer kept."""

    shared_experts = (REST_OF_WORLD,)


class FedALT(Algorithm):
    name = "fedalt"
    client = FedALTClient
    state_fields = ("individual", "rest_of_world")

    def __init__(self, config, clients, adapter_shapes, representation_dim: int = 0):
        super().__init__(config, clients, adapter_shapes, representation_dim)
        self.layout = AdapterLayout(2, (INDIVIDUAL,), True, (INDIVIDUAL, REST_OF_WORLD), 2)
        self.individual: dict[str, Tensors] = {}  # client -> its latest uploaded LoRA
        self.rest_of_world: dict[str, Tensors] = {}  # client -> its RoW LoRA, [1, ...] per key

    def client_layout_bound(self) -> AdapterLayout:
        return self.layout

    def initial_state(self) -> Tensors:
        """The common start: the seeded Individual LoRA, a RoW LoRA with B = 0, the mixer."""
        inits = [self.init_lora_state(seed_offset=e) for e in (INDIVIDUAL, REST_OF_WORLD)]
        state = {key: torch.cat([init[key] for init in inits]) for key in inits[0]}
        gen = torch.Generator().manual_seed(self.config.federation.seed + 1)
        for name, (d_in, _) in sorted(self.adapter_shapes.items()):
            state[f"{ADAPTER_PREFIX}{name}.router"] = init_router(d_in, 2, gen)
        return state

    def download(self, after_round: int, clients: Collection[str] | None = None
                 ) -> dict[str, Instruction]:
        if after_round == 0:
            return {cid: Instruction(self.initial_state(), self.layout)
                    for cid in self.client_ids(clients)}
        return {cid: Instruction(dict(self.rest_of_world[cid]), self.layout)
                for cid in self.client_ids(clients)}

    def configure_fit(self, rnd: int, first_time: Collection[str] = (),
                      clients: Collection[str] | None = None) -> dict[str, Instruction]:
        """A client training for the first time after round 1 gets the initial state with its
        RoW LoRA spliced in."""
        instructions = super().configure_fit(rnd, first_time, clients)
        if rnd > 1:
            for cid in first_time:
                instructions[cid].arrays = self.client.install(
                    Instruction(dict(self.rest_of_world[cid])), self.initial_state())
        return instructions

    def upload_spec(self, rnd: int, client_id: str) -> UploadSpec | None:
        return UploadSpec((INDIVIDUAL,), LORA_PARTS)

    def aggregate_fit(self, rnd: int, replies: dict[str, Reply]) -> None:
        """Keep every client's latest Individual LoRA; each client's RoW LoRA is the
        combination of the others' (the zero RoW LoRA while no other client has uploaded)."""
        self.individual.update({cid: dict(reply.arrays) for cid, reply in replies.items()})
        for c in self.clients:
            self.rest_of_world[c.client_id] = self.combined(
                [cid for cid in self.individual if cid != c.client_id])

    def combined(self, ids: list[str]) -> Tensors:
        """The Individual LoRAs of ``ids`` combined (weighted by training examples, or by the
        rule ``federation.aggregation`` names); the zero RoW LoRA for none."""
        zero = self.init_lora_state(seed_offset=REST_OF_WORLD)
        if not ids:
            return zero
        examples = {c.client_id: c.num_examples for c in self.clients}
        return {key: self.aggregation([self.individual[cid][key] for cid in ids],
                                      [examples[cid] for cid in ids])
                for key in zero}

    def newcomer_start(self, signal: Reply | None, client_id: str | None) -> Instruction:
        """The common start (a fresh Individual LoRA and mixer) with, as its RoW LoRA, the
        combination of every client's latest Individual LoRA (for a client of the federation:
        of the others', as it would get next round)."""
        row = (self.rest_of_world[client_id] if client_id in self.rest_of_world
               else self.combined(list(self.individual)))
        return Instruction(self.client.install(Instruction(dict(row)), self.initial_state()),
                           self.layout)
