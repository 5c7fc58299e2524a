"""Runs with ``[privacy]`` on: the adapters train under DP-SGD, every round reports each
client's epsilon, the run states its guarantee and mechanism, stops before it would cross its
budget, resumes its accounting, and works for every algorithm and both tasks. Without
``[privacy]`` nothing of this appears."""

import json
import math

import pytest
import torch

from fedlease.algorithms import ALGORITHMS
from fedlease.configure import load_config, with_overrides
from fedlease.errors import ConfigError
from fedlease.privacy.accounting import read_history
from fedlease.tasks.loading import build_trainers, load_clients
from fedlease.transports.simulator import run_simulation

dp_accounting = pytest.importorskip("dp_accounting", reason="the second accountant")
from dp_accounting import dp_event  # noqa: E402
from dp_accounting.rdp import RdpAccountant  # noqa: E402


def private(config, **privacy):
    return with_overrides(config, {"privacy": {"seeded_noise": True, **privacy}})


def test_without_privacy_nothing_changes(tiny_config, tmp_path):
    tiny_config.federation.rounds = 1
    result = run_simulation(tiny_config, tmp_path / "run", progress=False)
    assert result.privacy == {}
    assert not (tmp_path / "run" / "privacy.json").exists()
    assert "privacy" not in json.loads((tmp_path / "run" / "run.json").read_text())
    for metrics in result.history[0]["clients"].values():
        assert "epsilon" not in metrics and "train_loss" in metrics


def test_dp_training_moves_every_trainable_tensor(tiny_config):
    """The adapters (and the head) change under DP-SGD: Opacus sees the parameters the
    layout installed, not stale copies (the peft/Opacus pitfall)."""
    config = private(tiny_config, epsilon=8.0)
    clients = load_clients(config)
    trainer = build_trainers(config, clients[:1])[clients[0].client_id]
    algorithm = ALGORITHMS["fedlease"](config, [], trainer.model.adapter_shapes())
    from fedlease.model.lora import AdapterLayout

    layout = AdapterLayout.fedlease(2, 1)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.cat([v, v]) for k, v in algorithm.init_lora_state().items()}
    state = {k: (torch.randn(v.shape, generator=gen) * 0.1 if k.endswith("lora_B") else v)
             for k, v in state.items()}
    from fedlease.model.lora import init_router

    for name, (d_in, _) in trainer.model.adapter_shapes().items():
        state[f"adapter.{name}.router"] = init_router(d_in, 3, gen)
    state.update(trainer.new_head(0))
    new_state, metrics = trainer.train(state, layout, seed=3)
    for key, before in state.items():
        after = new_state[key]
        if key.endswith(("lora_A", "lora_B")):  # expert 1 trains, expert 0 is frozen
            assert torch.equal(after[0], before[0]), key
            assert not torch.allclose(after[1], before[1]), key
        else:
            assert not torch.allclose(after, before), key
    assert "train_loss" not in metrics and 0 < metrics["epsilon"] < metrics["epsilon_next"]
    assert read_history(new_state)[-1][2] == metrics["dp_noisy_steps"] == 3  # 24 ex / 8


def independent_epsilon(client: dict, rounds: int) -> float:
    """dp-accounting's RDP epsilon of the mechanism run.json states for a client."""
    events = [dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(
        client["sample_rate"], dp_event.GaussianDpEvent(client["noise_multiplier"])),
        client["noisy_steps"])]
    if client["embedding"]:
        events.append(dp_event.GaussianDpEvent(client["embedding"]["noise_multiplier"]))
    accountant = RdpAccountant()
    accountant.compose(dp_event.ComposedDpEvent(events))
    return accountant.get_epsilon(client["delta"])


def test_a_private_fedlease_run_states_and_spends_its_budget(tiny_config, tmp_path):
    config = private(tiny_config, epsilon=4.0)
    out = tmp_path / "run"
    result = run_simulation(config, out, progress=False)
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    spent = {cid: [r["clients"][cid]["epsilon"] for r in rounds] for cid in result.tasks}
    for cid, series in spent.items():
        assert series == sorted(series) and series[-1] <= 4.0 + 1e-6, cid
        assert series[-1] > 3.9, cid  # calibrated: the whole budget is used
    described = json.loads((out / "run.json").read_text())["privacy"]
    assert described == json.loads((out / "privacy.json").read_text()) == result.privacy
    assert described["stopped_before_round"] is None
    for client in described["clients"].values():
        assert client["noisy_steps"] == 3 * 3 and client["sampling"] == "poisson"
        assert client["delta"] == 1e-5 and client["accountant"] == "rdp"
        assert client["embedding"]["sensitivity"] == pytest.approx(2 / 24)
        assert client["epsilon"] == pytest.approx(independent_epsilon(client, 3), rel=0.01)
    assert "privacy: epsilon target" in (out / "summary.txt").read_text()


def test_a_fixed_noise_multiplier_stops_before_the_round_that_would_cross(tiny_config,
                                                                           tmp_path):
    config = private(tiny_config, epsilon=3.0, noise_multiplier=2.0)
    config.federation.rounds = 5
    out = tmp_path / "run"
    result = run_simulation(config, out, progress=False)
    assert [e["round"] for e in result.history] == [1, 2, 3]
    assert result.privacy["stopped_before_round"] == 4
    assert all(c["epsilon"] <= 3.0 for c in result.privacy["clients"].values())
    assert all(m["epsilon_next"] > 3.0 for m in result.history[-1]["clients"].values())
    assert (out / "summary.txt").exists() and (out / "run.json").exists()  # results saved
    # a resumed run sees the spent budget and starts no round either
    resumed = run_simulation(config, out, progress=False, resume=True)
    assert len(resumed.history) == 3 and resumed.privacy["stopped_before_round"] == 4


def test_an_interrupted_private_run_resumes_its_accountant(tiny_config, tmp_path,
                                                          interrupted_then_resumed):
    config = private(tiny_config, epsilon=4.0)
    config.federation.rounds = 2
    reference = run_simulation(config, None, progress=False)
    resumed = interrupted_then_resumed(config, tmp_path / "run", stop_round=2)
    assert strip_seconds(resumed.history) == strip_seconds(reference.history)
    assert resumed.privacy["clients"] == reference.privacy["clients"]


def strip_seconds(history):
    return [{cid: {k: v for k, v in m.items() if "seconds" not in k}
             for cid, m in entry["clients"].items()} for entry in history]


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_trains_under_dp(algorithm, tiny_config):
    config = private(tiny_config, epsilon=2.0)
    config.federation.algorithm = algorithm
    config.federation.rounds = 2
    result = run_simulation(config, None, progress=False)
    for metrics in result.history[-1]["clients"].values():
        assert 0 < metrics["epsilon"] <= 2.0 + 1e-6
    embedding = ALGORITHMS[algorithm].releases_embedding(config)
    assert all((c["embedding"] is not None) == embedding
               for c in result.privacy["clients"].values())


def test_generation_trains_under_dp(tiny_generation_config):
    config = private(tiny_generation_config, epsilon=8.0)
    config.federation.rounds = 2
    result = run_simulation(config, None, progress=False)
    assert all(0 < m["epsilon"] <= 8.0 + 1e-6 for m in result.history[-1]["clients"].values())
    assert all(math.isfinite(m["rouge_l"]) for m in result.history[-1]["clients"].values())


def test_secret_noise_is_not_the_seeded_noise(tiny_config):
    """Without seeded_noise two runs of the same seed draw different noise."""
    config = with_overrides(tiny_config, {"privacy": {"epsilon": 8.0}})
    config.federation.rounds = 1
    first, second = (run_simulation(config, None, progress=False) for _ in range(2))
    assert first.history[0]["clients"] != second.history[0]["clients"]


@pytest.mark.parametrize("field, value, expected", [
    ("epsilon", 0.0, "privacy.epsilon = 0.0: expected a number > 0"),
    ("delta", 1.0, "privacy.delta = 1.0: expected a number in (0, 1)"),
    ("max_grad_norm", -1.0, "privacy.max_grad_norm = -1.0: expected a number > 0"),
    ("embedding_share", 1.0, "privacy.embedding_share = 1.0: expected a number in (0, 1)"),
    ("accountant", "gdp", "privacy.accountant = 'gdp': expected one of rdp, prv"),
])
def test_bad_privacy_settings_name_the_field(field, value, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides={"privacy": {field: value}})


def test_dp_refuses_fp16_and_the_plain_embedding_noise():
    with pytest.raises(ConfigError, match="train.precision = 'fp16'"):
        load_config(overrides={"privacy": {"epsilon": 1.0}, "train": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match="federation.embedding_noise = 0.1"):
        load_config(overrides={"privacy": {"epsilon": 1.0},
                               "federation": {"embedding_noise": 0.1}})


@pytest.mark.parametrize("layout_name", ["plain LoRA", "FedLEASE mixture"])
def test_without_noise_or_clipping_dp_sgd_is_the_plain_step(tiny_model_dir, tmp_path,
                                                            layout_name):
    """Full-batch sampling (q = 1), no clipping (a huge bound), no noise: the sum of the
    per-example gradients Opacus and the mixture layer's sampler compute is the batch
    gradient, so DP-SGD's update is the plain local update's (dropout off: the two paths
    visit the examples in another order)."""
    from fedlease.model.lora import AdapterLayout, init_router
    from fedlease.privacy.accounting import ClientPlan
    from fedlease.privacy.dpsgd import private_train

    from ..conftest import write_federation

    config = load_config(overrides={
        "model": {"path": str(tiny_model_dir), "max_length": 16},
        "data": {"source": "jsonl", "path": str(write_federation(tmp_path / "fed", train=16))},
        "lora": {"dropout": 0.0}, "train": {"batch_size": 16, "lr": 1e-2}})
    clients = load_clients(config)
    trainer = build_trainers(config, clients[:1])[clients[0].client_id]
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    layout = AdapterLayout() if layout_name == "plain LoRA" else AdapterLayout.fedlease(2, 1)
    E, gen = layout.num_experts, torch.Generator().manual_seed(1)
    state = trainer.new_head(0)
    for name, (d_in, d_out) in trainer.model.adapter_shapes().items():
        state[f"adapter.{name}.lora_A"] = torch.randn(E, 4, d_in, generator=gen) * 0.1
        state[f"adapter.{name}.lora_B"] = torch.randn(E, d_out, 4, generator=gen) * 0.05
        if layout.router_slots:
            state[f"adapter.{name}.router"] = init_router(d_in, len(layout.router_slots), gen)
    plain, _ = trainer.train(state, layout, seed=0)
    exact = ClientPlan(epsilon=math.inf, delta=1e-5, max_grad_norm=1e9, accountant="rdp",
                       sample_rate=1.0, expected_batch_size=16, steps_per_round=1,
                       noise_multiplier=0.0, embedding_noise_multiplier=0.0, num_train=16)
    private, _ = private_train(trainer, state, layout, 0, exact, seeded=True)
    for key, value in plain.items():
        assert not torch.equal(value, state[key]) or key.endswith(("lora_A", "lora_B"))
        # Adam's first step is about lr * sign(g): a gradient near 0 differing in the last
        # bits moves by more than the others; 1e-4 is 1% of the step (lr 1e-2)
        torch.testing.assert_close(private[key], value, rtol=1e-4, atol=1e-4, msg=key)
