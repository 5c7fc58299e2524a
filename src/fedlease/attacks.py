"""The attack harness: named clients of a simulated federation behave maliciously, to measure
what a rule of ``federation.aggregation`` bounds. An experiment tool of the simulator
(``[attack]`` in a run config, or a ``fedlease compare`` variant such as
``fedlease+attack.clients=["news-0"]+attack.kind=sign-flip``), not a production path: a real
federation's clients run their own code, and Flower runs refuse an ``[attack]``.

What an attacker does (``attack.kind``); the server sees only its upload, and accepts it when
it passes the usual checks (``algorithms/validation.py``):

* ``sign-flip``: it trains honestly, then uploads ``start - (trained - start)`` for every
  adapter tensor (``start``: what it held before this round's training), its update reversed;
* ``scale``: it uploads ``start + s * (trained - start)``, ``s = attack.scale`` or, where that
  would exceed ``federation.max_update_norm``, the largest factor that stays within it (per
  tensor, so the upload is accepted);
* ``label-flip``: its training labels are replaced by the next label (``(y + 1) mod C``), an
  honest-looking update from poisoned data (classification only);
* ``forged-embedding``: the representation vector it uploads for FedLEASE's ``embedding`` (or
  ``hybrid``) allocation is the one ``attack.target`` computes, so it joins the target's
  cluster, then trains that cluster's expert on its own, different data.

An attacker's own model is the poisoned one too; honest clients are untouched, so their
metrics (``scripts/attack_study.py`` averages them) measure the harm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedlease.config import RunConfig
from fedlease.data.client_data import ClientData
from fedlease.errors import ConfigError
from fedlease.model.adapted import ADAPTER_PREFIX
from fedlease.registry import Registry
from fedlease.training import LocalTrainer

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AttackKind:
    """What an attacker of one ``attack.kind`` changes: its training labels, its upload (the
    factor on its update, given ``attack.scale``) or its representation vector."""

    flips_labels: bool = False
    update_factor: Callable[[float], float] | None = None
    forges_embedding: bool = False


ATTACKS: Registry[AttackKind] = Registry("attack.kind")
ATTACKS.register("sign-flip", AttackKind(update_factor=lambda scale: -1.0))
ATTACKS.register("scale", AttackKind(update_factor=lambda scale: scale))
ATTACKS.register("label-flip", AttackKind(flips_labels=True))
ATTACKS.register("forged-embedding", AttackKind(forges_embedding=True))


def config_problems(config: RunConfig) -> list[str]:
    """What ``[attack]`` needs besides its ranges (``config.loading``): a forged embedding's
    target."""
    attack = config.attack
    if ATTACKS[attack.kind].forges_embedding and attack.clients and not attack.target:
        return [f"attack.target = {attack.target!r}: expected the client whose cluster the "
                "forged embedding joins"]
    return []


def check_attackers(config: RunConfig, client_ids: list[str]) -> None:
    """Every client ``[attack]`` names exists, and at least one stays honest."""
    attack = config.attack
    unknown = [cid for cid in attack.clients if cid not in client_ids]
    if unknown:
        raise ConfigError(f"attack.clients = {attack.clients!r}: {unknown} are not clients of "
                          f"this federation; expected some of {client_ids}")
    if attack.clients and len(attack.clients) >= len(client_ids):
        raise ConfigError(f"attack.clients = {attack.clients!r}: every client attacks; "
                          "expected at least one honest client")
    if attack.clients and ATTACKS[attack.kind].forges_embedding and attack.target not in client_ids:
        raise ConfigError(f"attack.target = {attack.target!r}: not a client of this "
                          f"federation; expected one of {client_ids}")


def attacked_clients(config: RunConfig, clients: list) -> list:
    """The clients, checked against ``[attack]``; a label-flipping attacker's training labels
    replaced by the next label. Called before the model loads: a bad name costs nothing."""
    check_attackers(config, [c.client_id for c in clients])
    if not ATTACKS[config.attack.kind].flips_labels or not config.attack.clients:
        return clients
    out = []
    for client in clients:
        if client.client_id in config.attack.clients:
            if not isinstance(client, ClientData):
                raise ConfigError(f"attack.kind = 'label-flip': client {client.client_id!r} "
                                  "has no class labels; expected a classification task")
            client = dataclasses.replace(client, train=[
                dataclasses.replace(ex, label=(ex.label + 1) % client.num_labels)
                for ex in client.train])
        out.append(client)
    return out


def attacked_trainers(config: RunConfig,
                      trainers: dict[str, LocalTrainer]) -> dict[str, LocalTrainer]:
    """The trainers, those of the attackers wrapped so that what they upload is poisoned
    (label flips are already in their data)."""
    attack = config.attack
    if ATTACKS[attack.kind].flips_labels:
        return trainers
    return {cid: AttackingTrainer(trainer, config, trainers.get(attack.target))
            if cid in attack.clients else trainer for cid, trainer in trainers.items()}


class AttackingTrainer:
    """A client's trainer whose trained adapters are a poisoned update (sign-flip, scale) or
    whose representation vector is another client's (forged-embedding); everything else is
    the honest trainer's."""

    def __init__(self, trainer: LocalTrainer, config: RunConfig,
                 target: LocalTrainer | None = None):
        self.honest, self.target = trainer, target
        self.kind, self.scale = ATTACKS[config.attack.kind], config.attack.scale
        self.max_norm = config.federation.max_update_norm

    def __getattr__(self, name):
        return getattr(self.honest, name)

    def mean_representation(self) -> torch.Tensor:
        if self.kind.forges_embedding:
            return self.target.mean_representation()
        return self.honest.mean_representation()

    def train(self, state: Tensors, layout, seed: int, max_steps: int | None = None):
        trained, metrics = self.honest.train(state, layout, seed=seed, max_steps=max_steps)
        if self.kind.update_factor is None:
            return trained, metrics
        factor = self.kind.update_factor(self.scale)
        poisoned = {key: poisoned_update(key, state[key], value - state[key], factor,
                                         self.max_norm)
                    if key.startswith(ADAPTER_PREFIX) and key in state else value
                    for key, value in trained.items()}
        return poisoned, metrics


def poisoned_update(key: str, start: torch.Tensor, delta: torch.Tensor, factor: float,
                    max_norm: float) -> torch.Tensor:
    """``start + s * delta`` with ``s`` = ``factor``, or of the same sign and the largest
    size that keeps the uploaded part within ``max_norm``: a router whole, a LoRA tensor the
    experts (rows) that training changed, as those are what a client uploads."""
    if key.endswith(".router"):
        rows = torch.ones(start.shape[0], dtype=torch.bool)
    else:
        rows = delta.flatten(1).abs().sum(dim=1) > 0
    if not bool(rows.any()):
        return start.clone()
    r, d = start[rows].flatten().double(), delta[rows].flatten().double()
    size = largest_step(r, d, math.copysign(1.0, factor), max_norm * (1 - 1e-4))
    step = math.copysign(min(abs(factor), size), factor)
    return start + step * delta


def largest_step(r: torch.Tensor, d: torch.Tensor, sign: float, bound: float) -> float:
    """The largest ``t >= 0`` with ``|r + sign * t * d| <= bound`` (inf without a bound)."""
    dd = float(d @ d)
    if math.isinf(bound) or dd == 0:
        return math.inf
    rd, rr = sign * float(r @ d), float(r @ r)
    return max(0.0, (-rd + math.sqrt(max(0.0, rd * rd - dd * (rr - bound * bound)))) / dd)
