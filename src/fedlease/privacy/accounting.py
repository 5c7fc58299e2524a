"""One client's privacy mechanism for the whole run and the epsilon it has spent so far.

Every number here is the client's own: its DP-SGD (Poisson sampling at rate ``q = batch_size /
n``, ``ceil(n / batch_size)`` noisy steps per local epoch, Gaussian noise of std ``noise_multiplier
* max_grad_norm`` on the sum of clipped per-example gradients) and, where the algorithm asks for
it, one release of its allocation vector (a Gaussian mechanism, ``embedding.py``). The epsilon
of the composition is Opacus' accountant's (RDP or PRV) over the mechanism's history, a list of
``(noise_multiplier, sample_rate, steps)``; the one release of the allocation vector is the
entry ``(z, 1.0, 1)`` (no subsampling). Nothing here hand-computes a privacy loss.

The history is the client's accounting state: it travels in the client's local state under
``HISTORY_KEY`` (so the simulator's checkpoint and a Flower node's ``context.state`` keep it, and
a resumed run continues it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass

import torch
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from fedlease.config.schema import PrivacyConfig
from fedlease.errors import ConfigError
from fedlease.privacy.accountants import ACCOUNTANTS

HISTORY_KEY = "privacy.history"  # [entries, 3] float64: noise multiplier, sample rate, steps
# the budget checks' slack for floating-point noise in the accountant
EPSILON_SLACK = 1e-6
# the largest noise multiplier the calibration tries (a budget needing more is refused)
MAX_NOISE_MULTIPLIER = 1e4

Mechanism = tuple[float, float, int]  # noise multiplier, sample rate, steps
def client_delta(privacy: PrivacyConfig, num_train: int) -> float:
    """``privacy.delta``, or for 0 the smaller of 1e-5 and ``1 / (10 n)``: below ``1/n``."""
    return privacy.delta if privacy.delta > 0 else min(1e-5, 0.1 / max(num_train, 1))


def epsilon_of(history: list[Mechanism], delta: float, accountant: str) -> float:
    """The epsilon at ``delta`` of the composed mechanisms, by Opacus' ``accountant``."""
    entries = [(z, q, int(steps)) for z, q, steps in history if steps > 0]
    if not entries:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = entries
    with warnings.catch_warnings():  # "optimal order is the largest alpha": a looser bound
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta, **ACCOUNTANTS[accountant]))


@dataclass(frozen=True)
class ClientPlan:
    """A client's mechanism for the whole run, calibrated once from the config and its size."""

    epsilon: float  # the target, per client, for the whole run
    delta: float
    max_grad_norm: float
    accountant: str
    sample_rate: float  # Poisson sampling: each example in a step with this probability
    expected_batch_size: int
    steps_per_round: int  # local_epochs * ceil(n / batch_size)
    noise_multiplier: float  # of DP-SGD
    embedding_noise_multiplier: float  # of the allocation vector; 0: none is released
    num_train: int

    @property
    def embedding_std(self) -> float:
        """The noise std of the allocation vector: its multiplier times its sensitivity 2/n."""
        return self.embedding_noise_multiplier * 2.0 / self.num_train

    def initial_history(self) -> list[Mechanism]:
        """What is spent before training: the allocation vector, if the run releases one
        (counted from the start, whether or not the profile step has reached the client)."""
        z = self.embedding_noise_multiplier
        return [(z, 1.0, 1)] if z else []

    def epsilon_after(self, history: list[Mechanism], steps: int) -> float:
        """The epsilon once ``steps`` more noisy steps are taken after ``history``."""
        return epsilon_of(add_steps(history, self.noise_multiplier, self.sample_rate, steps),
                          self.delta, self.accountant)


def add_steps(history: list[Mechanism], noise_multiplier: float, sample_rate: float,
              steps: int) -> list[Mechanism]:
    """``history`` with ``steps`` more of the mechanism (merged into the last entry if same)."""
    if history and history[-1][:2] == (noise_multiplier, sample_rate):
        z, q, done = history[-1]
        return [*history[:-1], (z, q, done + steps)]
    return [*history, (noise_multiplier, sample_rate, steps)]


def calibrate(privacy: PrivacyConfig, *, num_train: int, batch_size: int, local_epochs: int,
              rounds: int, releases_embedding: bool) -> ClientPlan:
    """The client's plan (see ``_calibrate``); clients of the same size share it."""
    return _calibrate(dataclasses.astuple(privacy), num_train, batch_size, local_epochs,
                      rounds, releases_embedding)


@functools.lru_cache(maxsize=256)
def _calibrate(privacy_values: tuple, num_train: int, batch_size: int, local_epochs: int,
               rounds: int, releases_embedding: bool) -> ClientPlan:
    """The client's plan: the allocation vector's noise for its share of epsilon alone, then
    the DP-SGD noise multiplier (bisection over Opacus' accountant) so that the vector and every
    step of every round together spend at most ``privacy.epsilon`` (or the configured
    ``privacy.noise_multiplier``: the run then stops before the round that would cross it)."""
    privacy = PrivacyConfig(*privacy_values)
    delta = client_delta(privacy, num_train)
    sample_rate = min(1.0, batch_size / num_train)
    steps_per_round = local_epochs * math.ceil(num_train / batch_size)
    embedding_z = 0.0
    if releases_embedding:
        with warnings.catch_warnings():  # Opacus: "optimal order is the largest alpha"
            warnings.simplefilter("ignore")
            embedding_z = get_noise_multiplier(
                target_epsilon=privacy.epsilon * privacy.embedding_share, target_delta=delta,
                sample_rate=1.0, steps=1, accountant=privacy.accountant,
                **ACCOUNTANTS[privacy.accountant])
    prior = [(embedding_z, 1.0, 1)] if embedding_z else []
    noise = privacy.noise_multiplier or _noise_for(
        privacy, prior, sample_rate, steps_per_round * rounds, delta)
    first_round = epsilon_of([*prior, (noise, sample_rate, steps_per_round)], delta,
                             privacy.accountant)
    if first_round > privacy.epsilon + EPSILON_SLACK:
        raise ConfigError(f"privacy.noise_multiplier = {noise:g}: one round of a client with "
                          f"{num_train} training examples spends epsilon {first_round:.3g}, "
                          f"more than privacy.epsilon = {privacy.epsilon:g}; expected a larger "
                          "noise multiplier (or 0: calibrated to epsilon)")
    return ClientPlan(privacy.epsilon, delta, privacy.max_grad_norm, privacy.accountant,
                      sample_rate, batch_size, steps_per_round, noise, embedding_z, num_train)


def _noise_for(privacy: PrivacyConfig, prior: list[Mechanism], sample_rate: float, steps: int,
               delta: float, tolerance: float = 0.005) -> float:
    """The smallest noise multiplier (to ``tolerance`` in epsilon) whose ``steps`` after
    ``prior`` spend at most ``privacy.epsilon``."""
    def spent(z: float) -> float:
        return epsilon_of([*prior, (z, sample_rate, steps)], delta, privacy.accountant)

    low, high = 0.0, 1.0
    while spent(high) > privacy.epsilon:
        low, high = high, 2 * high
        if high > MAX_NOISE_MULTIPLIER:
            raise ConfigError(f"privacy.epsilon = {privacy.epsilon}: too small for {steps} "
                             f"noisy steps at delta {delta:g} (noise multiplier above "
                             f"{MAX_NOISE_MULTIPLIER:g})")
    while spent(high) < privacy.epsilon - tolerance and high - low > 1e-4:
        middle = (low + high) / 2
        if spent(middle) > privacy.epsilon:
            low = middle
        else:
            high = middle
    return high


def read_history(state: dict[str, torch.Tensor]) -> list[Mechanism] | None:
    """The accounting history a client state holds (None: it has none yet)."""
    rows = state.get(HISTORY_KEY)
    if rows is None:
        return None
    return [(float(z), float(q), int(steps)) for z, q, steps in rows.tolist()]


def history_tensor(history: list[Mechanism]) -> torch.Tensor:
    return torch.tensor([list(entry) for entry in history], dtype=torch.float64).reshape(-1, 3)
