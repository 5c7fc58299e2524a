"""The attack harness ([attack]): each attack changes what it should, and only that; bad
settings fail before any work."""

import math

import pytest
import torch

from fedlease.algorithms import ALGORITHMS, ClientInfo
from fedlease.algorithms.base import with_head
from fedlease.attacks import (
    AttackingTrainer,
    attacked_clients,
    attacked_trainers,
    poisoned_update,
)
from fedlease.configure import load_config, with_overrides
from fedlease.errors import ConfigError
from fedlease.tasks.loading import build_trainers, load_clients
from fedlease.transports.simulator import run_simulation


def attack(config, **values):
    return with_overrides(config, {"attack": values})


def test_sign_flip_reverses_the_update_and_scale_multiplies_it():
    start, delta = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, -0.25]])
    assert torch.equal(poisoned_update("adapter.x.lora_A", start, delta, -1.0, math.inf),
                       torch.tensor([[0.5, 0.25]]))
    assert torch.equal(poisoned_update("adapter.x.lora_A", start, delta, 4.0, math.inf),
                       torch.tensor([[3.0, -1.0]]))


def test_scale_stays_within_the_norm_bound_on_the_rows_training_changed():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, 5, generator=gen)
    delta = torch.zeros(3, 4, 5)
    delta[1] = 0.1 * torch.randn(4, 5, generator=gen)  # one trained expert of three
    bound = float(start[1].norm()) + 1.0
    out = poisoned_update("adapter.x.lora_B", start, delta, 1000.0, bound)
    assert float(out[1].norm()) == pytest.approx(bound, rel=1e-3)
    assert float(out[1].norm()) <= bound
    assert torch.equal(out[0], start[0]) and torch.equal(out[2], start[2])
    # the step is along the update, of the same sign, and smaller than asked
    step = (out[1] - start[1]) / delta[1]
    assert 1.0 < float(step.mean()) < 1000.0
    assert torch.allclose(step, step.flatten()[0].expand_as(step), rtol=1e-4)
    # a router is uploaded whole: the bound holds on the whole tensor
    router = poisoned_update("adapter.x.router", start[0], delta[1], 1000.0, bound + 5)
    assert float(router.norm()) <= bound + 5


def test_label_flip_shifts_only_the_attackers_training_labels(tiny_config):
    config = attack(tiny_config, clients=["colors-0"], kind="label-flip")
    clients = load_clients(config)
    flipped = {c.client_id: c for c in attacked_clients(config, clients)}
    for client in clients:
        other = flipped[client.client_id]
        labels = [ex.label for ex in client.train]
        if client.client_id == "colors-0":
            assert [ex.label for ex in other.train] == [(y + 1) % 2 for y in labels]
            assert [ex.text for ex in other.train] == [ex.text for ex in client.train]
        else:
            assert other.train == client.train
        assert other.test == client.test  # evaluated on its true labels


def one_client_round(config, algorithm="fedit"):
    """The first download of ``algorithm`` for colors-0, with a head, and its trainers."""
    trainers = build_trainers(config, load_clients(config))
    infos = [ClientInfo(cid, t.num_train) for cid, t in trainers.items()]
    model = trainers["colors-0"].model
    server = ALGORITHMS[algorithm](config, infos, model.adapter_shapes(),
                                   model.representation_dim)
    ins = server.configure_fit(1)["colors-0"]
    return trainers, with_head(dict(ins.arrays), ins, trainers["colors-0"]), ins


@pytest.mark.parametrize("kind, factor", [("sign-flip", -1.0), ("scale", 3.0)])
def test_an_attacking_trainer_poisons_the_adapters_and_nothing_else(tiny_config, kind,
                                                                    factor):
    config = attack(tiny_config, clients=["colors-0"], kind=kind, scale=3.0)
    config.federation.max_update_norm = math.inf
    trainers, state, ins = one_client_round(config)
    honest, honest_metrics = trainers["colors-0"].train(state, ins.layout, seed=ins.seed)
    wrapped = attacked_trainers(config, trainers)
    assert isinstance(wrapped["colors-0"], AttackingTrainer)
    assert wrapped["colors-1"] is trainers["colors-1"]
    poisoned, metrics = wrapped["colors-0"].train(state, ins.layout, seed=ins.seed)
    assert metrics["train_loss"] == honest_metrics["train_loss"]
    for key, value in honest.items():
        if key.startswith("adapter."):
            expected = state[key] + factor * (value - state[key])
            assert torch.allclose(poisoned[key], expected, atol=1e-6), key
        else:
            assert torch.equal(poisoned[key], value), key  # the head: honest
    assert any(not torch.equal(poisoned[k], honest[k]) for k in honest if "lora_B" in k)


def test_a_forged_embedding_joins_the_target_cluster(tiny_config):
    tiny_config.federation.warmup_rounds = 0
    tiny_config.federation.rounds = 1
    honest = run_simulation(tiny_config, None, progress=False)
    assignment = honest.report["assignment"]
    assert assignment["animals-0"] != assignment["colors-0"]
    config = attack(tiny_config, clients=["animals-0"], kind="forged-embedding",
                    target="colors-0")
    trainers = attacked_trainers(config, build_trainers(config, load_clients(config)))
    assert torch.equal(trainers["animals-0"].mean_representation(),
                       trainers["colors-0"].mean_representation())
    forged = run_simulation(config, None, progress=False).report["assignment"]
    assert forged["animals-0"] == forged["colors-0"]
    assert forged["animals-0"] != forged["animals-1"]


@pytest.mark.parametrize("values, message", [
    ({"clients": ["nobody-7"]}, r"attack.clients = \['nobody-7'\]: \['nobody-7'\] are not "
                                "clients of this federation"),
    ({"clients": ["colors-0", "colors-1", "animals-0", "animals-1"]}, "every client attacks"),
    ({"clients": ["colors-0"], "kind": "forged-embedding", "target": "ghost"},
     r"attack.target = 'ghost': not a client"),
])
def test_bad_attackers_fail_before_the_model_loads(tiny_config, tmp_path, monkeypatch,
                                                    values, message):
    import fedlease.transports.simulator as simulator

    monkeypatch.setattr(simulator, "build_trainers",
                        lambda *a: pytest.fail("the model loaded before the check"))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        run_simulation(attack(tiny_config, **values), out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("values, message", [
    ({"kind": "poison"}, "attack.kind = 'poison': expected one of sign-flip"),
    ({"clients": ["a"], "kind": "forged-embedding"}, "attack.target = '': expected the client"),
    ({"clients": ["a"], "target": "a"}, "attack.target = 'a': expected an honest client"),
    ({"scale": 0.5}, "attack.scale = 0.5: expected a number >= 1"),
    ({"clients": ["a", "a"]}, "attack.clients = \\['a', 'a'\\]: expected each client once"),
])
def test_attack_settings_are_checked_on_load(values, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={"attack": values})
