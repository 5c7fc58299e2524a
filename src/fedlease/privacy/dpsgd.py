"""DP-SGD as a client's local update: Poisson-sampled batches, per-example gradients of every
trainable tensor (Opacus' hooks; the mixture layer's own sampler, ``grad_sampler.py``), each
example's gradient clipped to ``max_grad_norm``, Gaussian noise on their sum (Opacus'
``DPOptimizer`` around the same AdamW the non-private step uses), steps counted into the
client's accounting history (``accounting.py``)."""

from __future__ import annotations

import secrets
import time
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
    read_history,
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


def private_train(trainer, state: dict[str, torch.Tensor], layout, seed: int,
                  plan: ClientPlan, seeded: bool, history: list[Mechanism] | None = None,
                  record: Callable[[list[Mechanism]], None] | None = None):
    """One round of DP-SGD on ``trainer``'s data: ``plan.steps_per_round`` noisy steps, each
    over a Poisson sample of the training set; the new state (with the longer history) and
    the round's metrics (epsilon spent so far and after one more such round). ``history``:
    what is spent before (None: the state's, else the plan's initial one); ``record``: called
    with the longer history before the new state is returned (a ledger on disk)."""
    if history is None:
        history = read_history(state)
    if history is None:
        history = plan.initial_history()
    after = add_steps(history, plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
    epsilon = epsilon_of(after, plan.delta, plan.accountant)
    if epsilon > plan.epsilon + EPSILON_SLACK:
        raise PrivacyBudgetExceeded(
            f"privacy.epsilon = {plan.epsilon:g}: this client has spent "
            f"{epsilon_of(history, plan.delta, plan.accountant):.4g}; another round would "
            f"bring it to {epsilon:.4g}")
    torch.manual_seed(seed)  # dropout
    model = trainer.model
    sampling, noise = step_generators(seeded, seed, model.device)
    model.load_state(state, layout)
    model.train()
    params = model.trainable_parameters()
    # hooks after load_state: it installs new parameter tensors, the hooks see these
    hooks = GradSampleHooks(model, loss_reduction="mean", strict=False)
    dropout_hooks = [record_dropout(layer) for layer in model.adapters.values()]
    optimizer = DPOptimizer(
        torch.optim.AdamW(params, lr=trainer.lr, weight_decay=trainer.weight_decay),
        noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
        expected_batch_size=plan.expected_batch_size, generator=noise)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Opacus' backward hooks on layers whose input needs no gradient (the first adapted
        # layer): PyTorch warns that the hook sees output gradients only, all Opacus needs
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        try:
            for _ in range(plan.steps_per_round):
                sample = (torch.rand(trainer.num_train, generator=sampling)
                          < plan.sample_rate).nonzero().flatten()
                optimizer.zero_grad(set_to_none=True)
                if len(sample) == 0:  # an empty Poisson sample: the step is noise only
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), device=p.device)
                for inputs, targets in trainer.batches("train", sample):
                    trainer.loss(inputs, targets).backward()
                one_sample(params)
                optimizer.step()
        finally:
            hooks.remove_hooks()
            for handle in dropout_hooks:
                handle.remove()
    model.eval()
    if record is not None:
        record(after)
    new_state = {**model.state(), HISTORY_KEY: history_tensor(after)}
    # no training loss, no token count: statistics of the private examples (the Poisson
    # samples' lengths) without noise
    metrics = {
        "train_steps": plan.steps_per_round,
        "train_seconds": time.perf_counter() - start,
        "trainable_params": sum(p.numel() for p in params),
        "epsilon": epsilon,
        "epsilon_next": plan.epsilon_after(after, plan.steps_per_round),
        "dp_noisy_steps": sum(steps for _, _, steps in after) - len(plan.initial_history()),
    }
    return new_state, metrics
