"""The calibration spends the budget it is given, and the epsilon it reports is the one an
independent accountant (Google's dp-accounting) computes for the same mechanism."""

import math

import pytest

from fedlease.config.schema import PrivacyConfig, RunConfig
from fedlease.errors import ConfigError
from fedlease.privacy.accounting import add_steps, calibrate, client_delta, epsilon_of
from fedlease.privacy.report import privacy_report

dp_accounting = pytest.importorskip("dp_accounting", reason="the second accountant")
from dp_accounting import dp_event  # noqa: E402
from dp_accounting.pld import PLDAccountant  # noqa: E402
from dp_accounting.rdp import RdpAccountant  # noqa: E402


def independent_epsilon(plan, rounds: int, accountant_cls=RdpAccountant) -> float:
    """dp-accounting's epsilon of the plan's whole run: the allocation vector (a Gaussian
    mechanism) composed with every Poisson-subsampled Gaussian step."""
    events = [dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(plan.sample_rate,
                                       dp_event.GaussianDpEvent(plan.noise_multiplier)),
        plan.steps_per_round * rounds)]
    if plan.embedding_noise_multiplier:
        events.append(dp_event.GaussianDpEvent(plan.embedding_noise_multiplier))
    accountant = accountant_cls()
    accountant.compose(dp_event.ComposedDpEvent(events))
    return accountant.get_epsilon(plan.delta)


@pytest.mark.parametrize("epsilon", [8.0, 3.0, 1.0])
@pytest.mark.parametrize("embedding", [True, False])
def test_calibrated_run_spends_its_budget_by_a_second_accountant(epsilon, embedding):
    privacy = PrivacyConfig(epsilon=epsilon)
    plan = calibrate(privacy, num_train=64, batch_size=16, local_epochs=2, rounds=3,
                     releases_embedding=embedding)
    assert plan.sample_rate == 0.25 and plan.steps_per_round == 8
    assert plan.delta == 1e-5 == client_delta(privacy, 64)
    history = add_steps(plan.initial_history(), plan.noise_multiplier, plan.sample_rate, 24)
    ours = epsilon_of(history, plan.delta, "rdp")
    assert epsilon - 0.01 <= ours <= epsilon  # all of it, not more
    assert ours == pytest.approx(independent_epsilon(plan, 3), rel=0.01)
    # RDP is an upper bound: the tighter PLD accounting of the same mechanism is below it
    assert independent_epsilon(plan, 3, PLDAccountant) <= ours * 1.001
    assert (plan.embedding_noise_multiplier > 0) == embedding


def test_the_allocation_vector_gets_its_share_alone():
    plan = calibrate(PrivacyConfig(epsilon=4.0, embedding_share=0.25), num_train=100,
                     batch_size=10, local_epochs=1, rounds=2, releases_embedding=True)
    alone = epsilon_of(plan.initial_history(), plan.delta, "rdp")
    assert 0.99 <= alone <= 1.0
    assert plan.embedding_std == pytest.approx(plan.embedding_noise_multiplier / 100)
    assert plan.delta == pytest.approx(min(1e-5, 0.1 / 100))


def test_prv_accountant_calibrates_too():
    plan = calibrate(PrivacyConfig(epsilon=3.0, accountant="prv"), num_train=64,
                     batch_size=16, local_epochs=1, rounds=3, releases_embedding=False)
    spent = epsilon_of([(plan.noise_multiplier, plan.sample_rate, 12)], plan.delta, "prv")
    assert spent <= 3.0 + 1e-6 and math.isfinite(plan.noise_multiplier)


def test_a_fixed_noise_multiplier_too_small_for_one_round_is_refused():
    with pytest.raises(ConfigError, match=r"privacy.noise_multiplier = 0.5: one round"):
        calibrate(PrivacyConfig(epsilon=1.0, noise_multiplier=0.5), num_train=64,
                  batch_size=16, local_epochs=1, rounds=3, releases_embedding=False)


# the relation a run states -> dp-accounting's name for it (zero-out: a special null example)
RELATIONS = {"zero-out": dp_accounting.NeighboringRelation.REPLACE_SPECIAL}


@pytest.mark.parametrize("epsilon", [8.0, 3.0, 1.0])
def test_the_stated_epsilon_holds_under_the_stated_relation(epsilon):
    """What privacy.json states (relation, per-client mechanism, the vector's noise std),
    recomputed by dp-accounting's PLD accountant under that relation with the vector's
    sensitivity derived here (zero-out: 1/n), spends at most the target. The issue's case:
    n = 128, batch 16, 8 rounds."""
    config = RunConfig()
    config.privacy = PrivacyConfig(epsilon=epsilon)
    config.train.batch_size, config.train.local_epochs, config.federation.rounds = 16, 1, 8
    stated = privacy_report(config, {"c": 128}, True, [], None)
    client = stated["clients"]["c"]
    relation = RELATIONS[stated["neighbouring_relation"]]
    vector_z = client["embedding"]["noise_std"] / (1 / 128)  # std / sensitivity
    events = [dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(client["sample_rate"],
                                       dp_event.GaussianDpEvent(client["noise_multiplier"])),
        client["steps_per_round"] * 8), dp_event.GaussianDpEvent(vector_z)]
    accountant = PLDAccountant(neighboring_relation=relation)
    accountant.compose(dp_event.ComposedDpEvent(events))
    assert accountant.get_epsilon(client["delta"]) <= epsilon
