"""The DP allocation vector: every example counts with unit length (so zeroing one out moves
the mean by at most 1/n, the sensitivity the noise is calibrated to), plus Gaussian noise of
the plan's std."""

import contextlib

import pytest
import torch

from fedlease.config.schema import PrivacyConfig
from fedlease.privacy.accounting import calibrate
from fedlease.privacy.embedding import private_mean_representation


class FakeModel:
    representation_dim = 5

    def eval(self):
        pass

    @contextlib.contextmanager
    def base_only(self):
        yield self


class FakeTrainer:
    """Representations given directly (the inputs are the vectors), in batches of 3."""

    def __init__(self, vectors):
        self.vectors, self.model = vectors, FakeModel()

    @property
    def num_train(self):
        return len(self.vectors)

    def representation_batches(self):
        for start in range(0, len(self.vectors), 3):
            yield self.vectors[start : start + 3]

    def representations(self, inputs):
        return inputs


def noiseless_plan(n):
    plan = calibrate(PrivacyConfig(epsilon=8.0), num_train=n, batch_size=4, local_epochs=1,
                     rounds=1, releases_embedding=True)
    return plan, plan.__class__(**{**plan.__dict__, "embedding_noise_multiplier": 0.0})


def test_zeroing_out_one_example_moves_the_mean_by_at_most_one_over_n():
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(10, 5, generator=gen) * 30
    vectors[4] *= 1000  # an outlier: still one unit vector
    neighbour = vectors.clone()
    neighbour[4] = 0.0  # the null example of the zero-out relation
    _, plan = noiseless_plan(10)
    zero = torch.Generator()
    a = private_mean_representation(FakeTrainer(vectors), plan, zero)
    b = private_mean_representation(FakeTrainer(neighbour), plan, zero)
    assert plan.embedding_sensitivity == pytest.approx(1 / 10)
    assert float((a - b).norm()) == pytest.approx(1 / 10, abs=1e-6)  # the bound, reached
    expected = (vectors / vectors.norm(dim=1, keepdim=True)).mean(0)
    torch.testing.assert_close(a, expected)


def test_the_noise_has_the_calibrated_std():
    plan, _ = noiseless_plan(10)
    assert plan.embedding_std == pytest.approx(plan.embedding_noise_multiplier / 10)
    trainer = FakeTrainer(torch.zeros(10, 5) + torch.tensor([1.0, 0, 0, 0, 0]))
    draws = torch.stack([private_mean_representation(trainer, plan,
                                                     torch.Generator().manual_seed(s))
                         for s in range(400)])
    noise = draws - torch.tensor([1.0, 0, 0, 0, 0])
    assert float(noise.std()) == pytest.approx(plan.embedding_std, rel=0.05)


def test_a_ledger_releases_the_vector_once_across_processes(tmp_path):
    """Two ClientPrivacy objects (two processes of a SuperNode) over one ledger: the second
    sends the first's vector, not a fresh draw, and the history counts it once."""
    from fedlease.privacy.client import ClientPrivacy
    from fedlease.privacy.ledger import PrivacyLedger

    plan, _ = noiseless_plan(10)
    trainer = FakeTrainer(torch.randn(10, 5, generator=torch.Generator().manual_seed(0)))
    ledger = PrivacyLedger.in_folder(tmp_path / "ledger", "c0")
    first = ClientPrivacy(plan, seeded_noise=False, ledger=ledger).embedding(trainer, 1)
    again = ClientPrivacy(plan, seeded_noise=False, ledger=ledger).embedding(trainer, 1)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert ledger.history() == plan.initial_history()  # the one release, counted once
