"""The allocation vector under DP: the mean of the client's per-example representations, each
scaled to unit length, plus Gaussian noise of std ``z / n`` (``1/n``: the mean's L2
sensitivity under the zero-out relation, one example's unit vector replaced by zero; ``z``
calibrated to the vector's share of epsilon, ``accounting.calibrate``)."""

from __future__ import annotations

import torch

from fedlease.privacy.accounting import ClientPlan


@torch.no_grad()
def private_mean_representation(trainer, plan: ClientPlan,
                                generator: torch.Generator) -> torch.Tensor:
    """The noisy mean over the training examples of their unit-length frozen-model
    representations (adapters off), float32."""
    model = trainer.model
    model.eval()
    total = torch.zeros(model.representation_dim, dtype=torch.float64)
    with model.base_only():
        for inputs in trainer.representation_batches():
            vectors = trainer.representations(inputs).double()
            total += (vectors / vectors.norm(dim=1, keepdim=True).clamp(min=1e-12)).sum(0).cpu()
    mean = total / trainer.num_train
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float64)
    return (mean + plan.embedding_std * noise).float()
