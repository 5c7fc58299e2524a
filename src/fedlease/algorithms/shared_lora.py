"""The family of baselines that share some parts of a plain LoRA and keep the rest local.

Local LoRA, FedIT, FFA-LoRA, FedSA-LoRA and FedDPA differ only in which experts and which parts
(A, B) of the client's adapters are averaged on the server, and in what trains; each of them is a
subclass that sets the class attributes below. Every client starts from the same seeded init
(one LoRA per expert: A random, B zero). After each round the server averages the uploaded
(shared) tensors over all clients, weighted by their training examples (or combines them by the
robust rule ``federation.aggregation`` names), and sends the average back; the client splices
it into the experts it kept, so its local parts are never overwritten.
Warm-up rounds do not apply: every round is the same.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from fedlease.algorithms.base import Algorithm, AlgorithmClient
from fedlease.algorithms.messages import Instruction, Reply, Tensors, UploadSpec
from fedlease.model.lora import AdapterLayout


class SharedLoRAClient(AlgorithmClient):
    shared_experts: tuple[int, ...] = (0,)  # set per algorithm: its ``shared_experts``

    @classmethod
    def install(cls, ins: Instruction, local_state: Tensors) -> Tensors:
        """A tensor the client has not got yet is taken whole (the initial LoRAs); one it has
        gets the shared experts replaced by the server's average, the rest kept."""
        state = dict(local_state)
        experts = torch.tensor(cls.shared_experts, dtype=torch.long)
        for key, value in ins.arrays.items():
            state[key] = value if key not in state else state[key].index_copy(0, experts, value)
        return state


class SharedLoRA(Algorithm):
    client = SharedLoRAClient
    num_experts = 1  # LoRAs per adapted layer, summed
    shared_experts: tuple[int, ...] = (0,)  # the experts whose shared parts are averaged
    shared_parts: tuple[str, ...] = ()  # "lora_A", "lora_B": what is averaged
    train_A = True
    state_fields = ("shared",)

    def __init__(self, config, clients, adapter_shapes, representation_dim: int = 0):
        super().__init__(config, clients, adapter_shapes, representation_dim)
        self.layout = AdapterLayout(self.num_experts, tuple(range(self.num_experts)),
                                    self.train_A)
        self.shared: Tensors = {}  # the latest averages, [len(shared_experts), ...] per key

    def __init_subclass__(cls, **kwargs):
        """Each algorithm's client splices the averages into the experts its server averages;
        it extends the client side the subclass declares (e.g. one with a ``local_loss``), else
        the one it inherits."""
        super().__init_subclass__(**kwargs)
        cls.client = type(f"{cls.__name__}Client", (cls.client,),
                          {"shared_experts": cls.shared_experts})

    def client_layout_bound(self) -> AdapterLayout:
        return self.layout

    def initial_state(self) -> Tensors:
        """One seeded LoRA per expert, stacked: the same start for every client."""
        inits = [self.init_lora_state(seed_offset=e) for e in range(self.num_experts)]
        return {key: torch.cat([init[key] for init in inits]) for key in inits[0]}

    def download(self, after_round: int, clients: Collection[str] | None = None
                 ) -> dict[str, Instruction]:
        arrays = self.initial_state() if after_round == 0 else self.shared
        return {cid: Instruction(dict(arrays), self.layout) for cid in self.client_ids(clients)}

    def configure_fit(self, rnd, first_time=(), clients=None):
        """A client training for the first time after round 1 gets the initial LoRAs with the
        shared experts replaced by the server's average: every expert whole, as its layout
        needs (FedDPA's personal LoRA is not among the shared ones)."""
        instructions = super().configure_fit(rnd, first_time, clients)
        if rnd > 1:
            for cid in first_time:
                instructions[cid].arrays = self.newcomer_start(None, cid).arrays
        return instructions

    def newcomer_start(self, signal: Reply | None, client_id: str | None) -> Instruction:
        """The initial LoRAs with the shared parts replaced by the server's latest average
        (FedIT: the global LoRA; local LoRA: the common init, trained from scratch)."""
        return Instruction(self.client.install(Instruction(dict(self.shared)),
                                               self.initial_state()), self.layout)

    def upload_spec(self, rnd: int, client_id: str) -> UploadSpec | None:
        if not self.shared_parts:
            return None
        return UploadSpec(tuple(self.shared_experts), tuple(self.shared_parts))

    def aggregate_fit(self, rnd: int, replies: dict[str, Reply]) -> None:
        if self.shared_parts and replies:
            self.shared = self.aggregate_replies(list(replies.values()))

    def server_experts(self) -> Tensors:
        """The global LoRA(s), when whole LoRAs are averaged (FedIT, FedDPA's global one)."""
        return dict(self.shared) if set(self.shared_parts) == {"lora_A", "lora_B"} else {}
