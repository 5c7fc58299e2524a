"""DP-SGD as a client's local update rule (``LocalTrainer.train`` runs the one loop):
Poisson-sampled batches, per-example gradients of every trainable tensor (Opacus' hooks; the
mixture layer's own sampler, ``grad_sampler.py``), each
example's gradient clipped to ``max_grad_norm``, Gaussian noise on their sum (Opacus'
``DPOptimizer`` around the same AdamW the non-private step uses), steps counted into the
client's accounting history (``accounting.py``)."""

from __future__ import annotations

import contextlib
import secrets
import warnings
from collections.abc import Callable

import torch
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer

from fedlease.errors import PrivacyBudgetExceeded
from fedlease.privacy.accounting import (
    EPSILON_SLACK,
    HISTORY_KEY,
    ClientPlan,
    Mechanism,
    add_steps,
    epsilon_of,
    history_tensor,
)
from fedlease.privacy.grad_sampler import record_dropout


def noise_generator(seeded: bool, seed: int, device: torch.device | str = "cpu"
                    ) -> torch.Generator:
    """A source of noise or batch sampling on ``device``: from the instruction's seed
    (reproducible, known to the server: experiments only) or a secret one from the operating
    system."""
    return torch.Generator(device=device).manual_seed(seed if seeded else secrets.randbits(63))


def step_generators(seeded: bool, seed: int, device: torch.device | str
                    ) -> tuple[torch.Generator, torch.Generator]:
    """The DP steps' two sources: Poisson sampling (drawn on the CPU, where the example
    indices are) and the gradient noise (on the parameters' ``device``: Opacus draws it
    there, and PyTorch refuses a generator of another device). Seeded: the noise's seed is
    ``seed + 2**31``, no client's seed (those are below 2**31, and the CPU generator keeps
    only a seed's low 32 bits)."""
    return noise_generator(seeded, seed), noise_generator(seeded, seed + 2**31, device)


def one_sample(params) -> None:
    """Join the per-example gradients of a Poisson sample computed in several chunks (a
    sample larger than ``batch_size``) into one tensor per parameter: Opacus counts each list
    entry as an accumulated step and would divide the sum by ``expected_batch_size`` times the
    number of chunks instead of once."""
    for p in params:
        if isinstance(p.grad_sample, list):
            p.grad_sample = torch.cat(p.grad_sample)


class DPSGDUpdate:
    """DP-SGD as the update rule of ``LocalTrainer.train``'s one loop: ``plan.steps_per_round``
    noisy steps, each over a Poisson sample of the training set; then the longer history (in
    the new state, and recorded first where the client keeps a ledger) and the round's
    metrics (epsilon spent so far and after one more such round). Refuses, before any work,
    a round that would take the client past its budget. ``history``: what is spent before."""

    def __init__(self, trainer, plan: ClientPlan, seeded: bool, seed: int,
                 history: list[Mechanism],
                 record: Callable[[list[Mechanism]], None] | None = None):
        self.after = add_steps(history, plan.noise_multiplier, plan.sample_rate,
                               plan.steps_per_round)
        self.epsilon = epsilon_of(self.after, plan.delta, plan.accountant)
        if self.epsilon > plan.epsilon + EPSILON_SLACK:
            raise PrivacyBudgetExceeded(
                f"privacy.epsilon = {plan.epsilon:g}: this client has spent "
                f"{epsilon_of(history, plan.delta, plan.accountant):.4g}; another round "
                f"would bring it to {self.epsilon:.4g}")
        self.trainer, self.plan, self.record = trainer, plan, record
        self.sampling, self.noise = step_generators(seeded, seed, trainer.model.device)

    @contextlib.contextmanager
    def attached(self, model, params):
        """Opacus' per-example hooks (after ``load_state``: it installs the parameter tensors
        the hooks must see), the dropout masks' recorders and the ``DPOptimizer`` around the
        same AdamW the plain rule uses."""
        hooks = GradSampleHooks(model, loss_reduction="mean", strict=False)
        dropout_hooks = [record_dropout(layer) for layer in model.adapters.values()]
        self.params = params
        self.optimizer = DPOptimizer(
            torch.optim.AdamW(params, lr=self.trainer.lr, weight_decay=self.trainer.weight_decay),
            noise_multiplier=self.plan.noise_multiplier, max_grad_norm=self.plan.max_grad_norm,
            expected_batch_size=self.plan.expected_batch_size, generator=self.noise)
        with warnings.catch_warnings():
            # Opacus' backward hooks on layers whose input needs no gradient (the first adapted
            # layer): PyTorch warns that the hook sees output gradients only, all Opacus needs
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            try:
                yield
            finally:
                hooks.remove_hooks()
                for handle in dropout_hooks:
                    handle.remove()

    def steps(self):
        """Per step, the chunks (of at most ``batch_size``) of one Poisson sample."""
        for _ in range(self.plan.steps_per_round):
            sample = (torch.rand(self.trainer.num_train, generator=self.sampling)
                      < self.plan.sample_rate).nonzero().flatten()
            self.empty = len(sample) == 0
            yield self.trainer.batches("train", sample)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, inputs) -> None:
        loss.backward()

    def step(self) -> None:
        if self.empty:  # an empty Poisson sample: the step is noise only
            for p in self.params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device)
        one_sample(self.params)
        self.optimizer.step()

    def finish(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The new state's history and the metrics; the ledger's record first."""
        if self.record is not None:
            self.record(self.after)
        # no training loss, no token count: statistics of the private examples (the Poisson
        # samples' lengths) without noise
        metrics = {
            "train_steps": self.plan.steps_per_round,
            "epsilon": self.epsilon,
            "epsilon_next": self.plan.epsilon_after(self.after, self.plan.steps_per_round),
            "dp_noisy_steps": (sum(steps for _, _, steps in self.after)
                               - len(self.plan.initial_history())),
        }
        return {HISTORY_KEY: history_tensor(self.after)}, metrics
