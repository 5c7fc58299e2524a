"""The messages an algorithm exchanges, apart from the algorithm (as Flower keeps ``Message``
apart from ``Strategy``): ``Instruction`` (server -> client), ``Reply`` (client -> server),
``UploadSpec`` (what to send back) and the reading of an algorithm's own typed fields.

Tensors travel as ``dict[str, Tensor]`` keyed by state name (``fedlease.model.adapted``'s key
names); the rest of a message is typed fields (the layout, the upload spec, seeds) and, for an
algorithm that needs more, a dataclass of its own (``Algorithm.instruction_fields`` /
``reply_fields``: IFCA's cluster).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

import torch

from fedlease.errors import ProtocolError
from fedlease.model.adapted import ADAPTER_PREFIX
from fedlease.model.lora import ADAPTER_PARTS, AdapterLayout

Tensors = dict[str, torch.Tensor]

# the upload part and key of a client's representation vector (not part of its model state)
EMBEDDING_PART = "embedding"
EMBEDDING_KEY = "profile.embedding"
# what an upload spec may ask for: the adapter parts, and the representation vector
UPLOAD_PARTS = (*ADAPTER_PARTS, EMBEDDING_PART)


@dataclass(frozen=True)
class UploadSpec:
    """What a client uploads after its local step: the ``parts`` of the ``experts`` (indices
    into its layout's experts; a router is uploaded whole); the part ``"embedding"`` is its
    representation vector, with Gaussian noise of std ``embedding_noise`` per coordinate."""

    experts: tuple[int, ...] = ()
    parts: tuple[str, ...] = ()
    embedding_noise: float = 0.0

    def to_config(self) -> dict:
        return {"experts": list(self.experts), "parts": list(self.parts),
                "embedding_noise": self.embedding_noise}

    @classmethod
    def from_config(cls, value) -> UploadSpec | None:
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) != {"experts", "parts", "embedding_noise"}:
            raise ProtocolError(f"upload spec {value!r}: expected {{'experts': [...], "
                                "'parts': [...], 'embedding_noise': std}} or None")
        experts, parts, noise = value["experts"], value["parts"], value["embedding_noise"]
        if not isinstance(experts, (list, tuple)) or not all(
                isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in experts):
            raise ProtocolError(f"upload spec experts = {experts!r}: expected a list of "
                                "expert indices (integers >= 0)")
        if not isinstance(parts, (list, tuple)) or not set(parts) <= set(UPLOAD_PARTS):
            raise ProtocolError(f"upload spec parts = {parts!r}: expected a list of "
                                f"{', '.join(UPLOAD_PARTS)}")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
            raise ProtocolError(f"upload spec embedding_noise = {noise!r}: expected a number "
                                ">= 0")
        return cls(tuple(experts), tuple(parts), float(noise))

    @property
    def embedding(self) -> bool:
        """Whether the client's representation vector is asked for."""
        return EMBEDDING_PART in self.parts


@dataclass
class Instruction:
    """Server -> client: tensors to install over the client's local state, and what to do."""

    arrays: Tensors
    layout: AdapterLayout | None = None  # the adapters to train / evaluate; None: a profile
    upload: UploadSpec | None = None  # what to send back after training; None: nothing
    seed: int = 0  # the client's seed for this step: dropout, batch order, embedding noise
    head_seed: int = 0  # a new task head's init: the same for every client
    extra: object = None  # the algorithm's own fields: an ``instruction_fields`` instance
    # a newcomer's budget: the client never trained, it adapts for this many local steps
    # first (``AlgorithmClient.onboard``); None: an ordinary instruction
    newcomer_steps: int | None = None

    def to_config(self) -> dict:
        """Everything but the tensors, as JSON-able values (Flower sends it as one string)."""
        return {"layout": None if self.layout is None else self.layout.to_config(),
                "upload": None if self.upload is None else self.upload.to_config(),
                "seed": self.seed, "head_seed": self.head_seed,
                "extra": None if self.extra is None else dataclasses.asdict(self.extra),
                "newcomer_steps": self.newcomer_steps}

    @classmethod
    def from_config(cls, arrays: Tensors, value: dict, extra_type: type | None) -> Instruction:
        """The inverse of ``to_config``; ``extra_type``: the algorithm's ``instruction_fields``."""
        keys = {"layout", "upload", "seed", "head_seed", "extra", "newcomer_steps"}
        if not isinstance(value, dict) or set(value) != keys:
            raise ProtocolError(f"instruction {value!r}: expected the keys {sorted(keys)}")
        layout = None if value["layout"] is None else AdapterLayout.from_config(value["layout"])
        steps = value["newcomer_steps"]
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or steps < 0):
            raise ProtocolError(f"instruction newcomer_steps = {steps!r}: expected an integer "
                                ">= 0 or None")
        return cls(arrays, layout, UploadSpec.from_config(value["upload"]), int(value["seed"]),
                   int(value["head_seed"]), read_fields(extra_type, value["extra"], "instruction"),
                   steps)


@dataclass
class Reply:
    """Client -> server."""

    arrays: Tensors
    num_examples: int
    metrics: dict = field(default_factory=dict)
    # the algorithm's own fields: a ``reply_fields`` instance (its wire form, a dict, until the
    # server's validation reads it); None for an algorithm that declares none
    extra: object = None


@dataclass(frozen=True)
class MalformedReply:
    """A reply that could not be read off the wire (a record missing, a field not JSON): the
    server's validation rejects it with ``reason``, like any other bad upload."""

    reason: str
    # the tensor payload that arrived all the same (counted as uploaded: it travelled)
    upload_bytes: int = 0


def read_fields(cls: type | None, value, what: str):
    """An algorithm's own message fields: ``value`` (an instance of the dataclass ``cls`` or
    its ``asdict`` form) checked against ``cls``'s field types (int, float, str, or one of
    them or None); None when ``cls`` is None. Raises ``ProtocolError``."""
    if cls is None:
        if value is not None:
            raise ProtocolError(f"{what}: unexpected algorithm fields {value!r}")
        return None
    if isinstance(value, cls):
        value = dataclasses.asdict(value)
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(value, dict) or set(value) != names:
        raise ProtocolError(f"{what}: fields {value!r}, expected {cls.__name__} with "
                            f"{sorted(names)}")
    for name, hint in typing.get_type_hints(cls).items():
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        item = value[name]
        ok = any(item is None if kind is type(None)
                 else isinstance(item, int) and not isinstance(item, bool) if kind is int
                 else isinstance(item, (int, float)) and not isinstance(item, bool)
                 if kind is float else isinstance(item, kind) for kind in allowed)
        if not ok:
            raise ProtocolError(f"{what}: {name} = {item!r}, expected {hint}")
    return cls(**value)


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows of a client: its id and its number of training examples."""

    client_id: str
    num_examples: int


def tensor_bytes(arrays: Tensors) -> int:
    return sum(t.numel() * t.element_size() for t in arrays.values())


def select_upload(state: Tensors, spec: UploadSpec | None) -> Tensors:
    """The part of a client's state it sends: the listed parts, of the listed experts only."""
    if spec is None:
        return {}
    experts = torch.tensor(spec.experts, dtype=torch.long)
    out = {}
    for key, value in state.items():
        part = key.rsplit(".", 1)[-1]
        if key.startswith(ADAPTER_PREFIX) and part in spec.parts:
            out[key] = value if part == "router" else value.index_select(0, experts)
    return out
