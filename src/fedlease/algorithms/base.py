"""The interface every federated algorithm implements (``Algorithm``, server side, and
``AlgorithmClient``, client side); the messages it exchanges are ``messages.py``'s.

The message flow of one round, whatever drives it (the simulator or Flower):

1. server: ``Algorithm.configure_fit(rnd, clients=chosen)`` -> one ``Instruction`` per chosen
   client (tensors to install, the adapter layout to train, what to upload);
2. client: ``AlgorithmClient.fit(instruction, local_state, trainer)`` -> ``Reply`` + new local
   state;
3. server: ``accept_replies`` (validation.py) checks every reply, then ``aggregate_fit(rnd,
   replies)``;
4. server: ``configure_evaluate(rnd, clients)``, client: ``AlgorithmClient.evaluate(...)``
   -> metrics.

Before round 1 an algorithm may ask each client for a profile (``configure_profile`` ->
``AlgorithmClient.profile`` -> ``aggregate_profile``): FedLEASE's ``embedding`` allocation asks
for the client's mean representation, one vector under ``EMBEDDING_KEY``.

A client that never trained (a newcomer: one that joins after the run, ``fedlease join``, or one
that client sampling never picked) is served by ONE protocol for every algorithm, with the same
budget of local steps (docs/algorithms.md, "Newcomers"): the server may first ask it for its
placement signal (``Algorithm.newcomer_request`` -> ``AlgorithmClient.newcomer_signal``), then
sends what it starts from (``Algorithm.newcomer``: FedLEASE its cluster's experts and router,
IFCA every cluster LoRA, FedIT the global LoRA, local LoRA the common init); the client
installs it over the common head init (IFCA: picks the cluster with the lowest loss on its
training data) and trains head and adapters for ``Instruction.newcomer_steps`` steps
(``AlgorithmClient.onboard``).

The client keeps whatever it does not upload (its head, local LoRA parts) in
its local state between rounds; the server never sees it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import TYPE_CHECKING, ClassVar

import torch

from fedlease.algorithms.aggregation import aggregate_uploads, aggregation_rule
from fedlease.algorithms.messages import (
    EMBEDDING_KEY,
    ClientInfo,
    Instruction,
    Reply,
    Tensors,
    UploadSpec,
    select_upload,
    tensor_bytes,
)
from fedlease.model.adapted import ADAPTER_PREFIX, HEAD_PREFIX
from fedlease.model.lora import AdapterLayout, init_lora

if TYPE_CHECKING:  # annotations only: config validation imports this package
    from fedlease.config.schema import RunConfig
    from fedlease.training import LocalLoss


class AlgorithmClient:
    """The client side of an algorithm: what a client does with an ``Instruction``. Class
    methods without state of their own: the client's local state goes in and comes out (the
    simulator keeps it per client, a Flower node in its ``Context``)."""

    @classmethod
    def install(cls, ins: Instruction, local_state: Tensors) -> Tensors:
        """The client's state once what came down is installed over what it kept."""
        return {**local_state, **ins.arrays}

    @classmethod
    def fit(cls, ins: Instruction, local_state: Tensors, trainer) -> tuple[Reply, Tensors]:
        """Install what came down over the local state, train, upload what was asked."""
        return cls.train_and_upload(with_head(cls.install(ins, local_state), ins, trainer),
                                    ins, trainer)

    @classmethod
    def local_loss(cls, ins: Instruction) -> LocalLoss | None:
        """A term added to the task's loss at every local step of this instruction's update:
        a function of the trainable tensors (by parameter name) and of their values when the
        update began; None (the default): the task's loss alone. FedProx's proximal term
        ``mu / 2 * ||w - w_start||^2`` is one (docs/extending.md)."""
        return None

    @classmethod
    def train_and_upload(cls, state: Tensors, ins: Instruction, trainer) -> tuple[Reply, Tensors]:
        """Train (a newcomer: its ``newcomer_steps``), then upload what ``ins`` asks."""
        local_loss = cls.local_loss(ins)
        options = {} if local_loss is None else {"local_loss": local_loss}
        if ins.newcomer_steps is not None:
            options["max_steps"] = ins.newcomer_steps
        state, metrics = trainer.train(state, ins.layout, seed=ins.seed, **options)
        upload = select_upload(state, ins.upload)
        if ins.upload is not None and ins.upload.embedding:
            upload[EMBEDDING_KEY] = client_embedding(trainer, ins)
        metrics["upload_bytes"] = tensor_bytes(upload)
        return Reply(upload, trainer.num_train, metrics), state

    @classmethod
    def profile(cls, ins: Instruction, trainer) -> Reply:
        """Compute and upload what ``configure_profile`` asked for, before any training."""
        upload = {EMBEDDING_KEY: client_embedding(trainer, ins)}
        return Reply(upload, trainer.num_train, {"upload_bytes": tensor_bytes(upload)})

    @classmethod
    def evaluate(cls, ins: Instruction, local_state: Tensors, trainer) -> dict:
        """A newcomer (``ins.newcomer_steps`` set) is evaluated as the newcomer protocol
        leaves it (``onboard``); a client is otherwise evaluated with its own state."""
        if ins.newcomer_steps is not None:
            return trainer.evaluate(cls.onboard(ins, trainer), ins.layout)
        return trainer.evaluate(with_head(cls.install(ins, local_state), ins, trainer),
                                ins.layout)

    # -- the newcomer protocol, client side ------------------------------------------------

    @classmethod
    def start_state(cls, ins: Instruction, trainer) -> Tensors:
        """What a newcomer starts from: the download over the common head init."""
        return with_head(cls.install(ins, {}), ins, trainer)

    @classmethod
    def newcomer_signal(cls, ins: Instruction, trainer) -> Reply:
        """What ``Algorithm.newcomer_request`` asked, for the server to place the newcomer:
        its representation vector (a profile), or the LoRA it trains from the download in its
        ``newcomer_steps`` (FedLEASE's ``lora-b`` signal)."""
        if ins.layout is None:
            return cls.profile(ins, trainer)
        return cls.train_and_upload(cls.start_state(ins, trainer), ins, trainer)[0]

    @classmethod
    def onboard(cls, ins: Instruction, trainer) -> Tensors:
        """The newcomer's model: ``start_state``, then ``ins.newcomer_steps`` steps of local
        training of the head and of what ``ins.layout`` trains (none: as it starts)."""
        state = cls.start_state(ins, trainer)
        if not ins.newcomer_steps:
            return state
        return trainer.train(state, ins.layout, seed=ins.seed, max_steps=ins.newcomer_steps)[0]


class Algorithm(ABC):
    """The server side of a federated algorithm; its client side is ``client``."""

    name = ""
    client: ClassVar[type[AlgorithmClient]] = AlgorithmClient
    # dataclasses of the fields this algorithm adds to its messages (None: none); a reply's
    # are checked on arrival (``read_fields``, then ``check_reply_fields``)
    instruction_fields: ClassVar[type | None] = None
    reply_fields: ClassVar[type | None] = None
    # names of the attributes holding the server's mutable state (tensors, numbers, strings, or
    # nested dicts/lists of those): what a checkpoint must save to resume the run
    state_fields: tuple[str, ...] = ()
    # whether the first ``federation.warmup_rounds`` rounds are a warm-up phase (FedLEASE's
    # clustering needs them); the other algorithms train the same way in every round
    uses_warmup = False

    def __init__(self, config: RunConfig, clients: list[ClientInfo],
                 adapter_shapes: dict[str, tuple[int, int]], representation_dim: int = 0):
        self.config = config
        self.clients = clients
        self.adapter_shapes = adapter_shapes
        # length of a client's representation vector (the base model's hidden size)
        self.representation_dim = representation_dim
        self.client_index = {c.client_id: i for i, c in enumerate(clients)}
        # how a group's uploads are combined, per coordinate (federation.aggregation)
        self.aggregation = aggregation_rule(config.federation.aggregation,
                                            config.federation.trim_fraction)

    @classmethod
    def config_problems(cls, config: RunConfig) -> list[str]:
        """What in ``config`` this algorithm cannot run with, one message per problem (run
        with the other checks when a config is loaded, ``fedlease.configure``); none here."""
        return []

    def warmup_states(self, rnd: int, local_states: dict[str, Tensors]) -> dict[str, Tensors]:
        """The clients' states (of ``local_states``, the server-held ones) to keep as the run's
        warm-up adapters after round ``rnd``; none for an algorithm without a warm-up."""
        return {}

    # -- server side: what each algorithm defines ------------------------------------------

    @abstractmethod
    def download(self, after_round: int, clients: Collection[str] | None = None
                 ) -> dict[str, Instruction]:
        """Per client of ``clients`` (None: every client; see ``client_ids``): the tensors and
        layout it holds once round ``after_round`` is aggregated (``after_round = 0``: before
        training starts)."""

    def client_ids(self, clients: Collection[str] | None) -> Collection[str]:
        """``clients``, or every client's id (None). A round configures only the clients it
        sends to, so a round's server work grows with the clients per round, not with N."""
        return self.client_index if clients is None else clients

    @abstractmethod
    def upload_spec(self, rnd: int, client_id: str) -> UploadSpec | None:
        """What the client uploads after training in round ``rnd`` (None: nothing)."""

    @abstractmethod
    def aggregate_fit(self, rnd: int, replies: dict[str, Reply]) -> None:
        """Take the accepted replies of round ``rnd`` into the server's state."""

    def check_reply_fields(self, ins: Instruction, reply: Reply) -> None:  # noqa: B027 optional
        """Raise ``RejectedUpload`` unless ``reply.extra`` (already of type ``reply_fields``)
        holds values this algorithm's aggregation can use (e.g. IFCA's cluster in range);
        checked on arrival with the tensors. The default checks nothing more."""

    # -- the newcomer protocol, server side -------------------------------------------------

    def newcomer_request(self, steps: int) -> Instruction | None:
        """What a newcomer computes and uploads for the server to place it (FedLEASE: its
        allocation signal), given its budget of ``steps``; None (the default): nothing."""
        return None

    @abstractmethod
    def newcomer_start(self, signal: Reply | None, client_id: str | None) -> Instruction:
        """The tensors, layout and fields a newcomer starts from: after ``newcomer_request``
        (``signal``: its answer, None if none was asked), or for ``client_id``, a client of the
        federation that never trained (placed by what the server holds of it)."""

    def newcomer(self, steps: int, signal: Reply | None = None,
                 client_id: str | None = None) -> Instruction:
        """The newcomer protocol, server side: ``newcomer_start`` with a budget of ``steps``
        local steps, the common head seed and a seed of its own (the client's, for a client of
        the federation)."""
        ins = self.newcomer_start(signal, client_id)
        seed = self.config.federation.seed
        ins.seed = seed if client_id is None else self.client_seed(0, client_id)
        ins.head_seed = seed
        ins.newcomer_steps = steps
        return ins

    def report(self) -> dict:
        """Extra results for the run summary (e.g. the clustering); JSON-serialisable."""
        return {}

    def server_experts(self) -> Tensors:
        """The whole LoRAs the server holds after the last aggregation, stacked on the expert
        axis (``adapter.<module>.lora_A`` / ``lora_B``); empty if it holds none. The run writes
        them out so they can be exported (``fedlease export --expert K``)."""
        return {}

    def configure_profile(self) -> dict[str, Instruction]:
        """What each client computes and uploads once, before round 1 (default: nothing)."""
        return {}

    def aggregate_profile(self, replies: dict[str, Reply]) -> None:  # noqa: B027 optional
        """Take the accepted profile replies (called only when ``configure_profile`` asked)."""

    def client_layout_bound(self) -> AdapterLayout:
        """The largest adapters a client ever holds: what bounds the size of its saved state."""
        return AdapterLayout()

    @classmethod
    def releases_embedding(cls, config: RunConfig) -> bool:
        """Whether a client uploads its representation vector in this run (under
        ``[privacy]`` it is counted in the client's epsilon)."""
        return False

    # -- server side: shared --------------------------------------------------------------

    def aggregate_replies(self, replies: list[Reply]) -> Tensors:
        """Every uploaded tensor combined over ``replies`` by ``federation.aggregation``
        (``mean``: weighted by the clients' training examples)."""
        return aggregate_uploads([r.arrays for r in replies], [r.num_examples for r in replies],
                                 self.aggregation)

    def configure_fit(self, rnd: int, first_time: Collection[str] = (),
                      clients: Collection[str] | None = None) -> dict[str, Instruction]:
        """The instructions of round ``rnd`` to ``clients`` (None: every client).
        ``first_time``: those that have never trained (a runner that samples clients has some);
        they also get the initial tensors (``download(0)``) under the current ones."""
        instructions = self.download(rnd - 1, clients)
        if rnd > 1 and first_time:
            initial = self.download(0, first_time)
            for cid in first_time:
                instructions[cid].arrays = {**initial[cid].arrays, **instructions[cid].arrays}
        for cid, ins in instructions.items():
            ins.upload = self.upload_spec(rnd, cid)
            ins.seed = self.client_seed(rnd, cid)
            # a common head init, like the common LoRA init: with per-client random heads the
            # warm-up B matrices would mostly reflect the random head, not the client's data
            ins.head_seed = self.config.federation.seed
        return instructions

    def configure_evaluate(self, rnd: int, clients: Collection[str] | None = None
                           ) -> dict[str, Instruction]:
        return self.download(rnd, clients)

    def client_seed(self, rnd: int, client_id: str) -> int:
        return (self.config.federation.seed * 1_000_003 + rnd * 10_007
                + self.client_index[client_id]) % 2**31

    def init_lora_state(self, seed_offset: int = 0) -> Tensors:
        """One LoRA (``E = 1``) for every adapted layer, the same for every client given the
        seed: clients must start from a common A for their B matrices to be comparable."""
        gen = torch.Generator().manual_seed(self.config.federation.seed + seed_offset)
        state = {}
        for name, (d_in, d_out) in sorted(self.adapter_shapes.items()):
            A, B = init_lora(d_in, d_out, self.config.lora.rank, gen)
            state[f"{ADAPTER_PREFIX}{name}.lora_A"] = A
            state[f"{ADAPTER_PREFIX}{name}.lora_B"] = B
        return state


def client_embedding(trainer, ins: Instruction) -> torch.Tensor:
    """The client's allocation vector (``LocalTrainer.embedding``), its noise and seed from
    the instruction."""
    noise = ins.upload.embedding_noise if ins.upload is not None else 0.0
    return trainer.embedding(ins.seed, noise)


def with_head(state: Tensors, ins: Instruction, trainer) -> Tensors:
    """The state with a task head: the client's own, or a new one from the common head seed."""
    if HEAD_PREFIX + "weight" in state:
        return state
    return {**state, **trainer.new_head(ins.head_seed)}
