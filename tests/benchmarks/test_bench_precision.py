"""The precision benchmark trains what a run trains: both layouts load and train on a client."""

import pytest

from fedlease.tasks.loading import build_trainers, load_clients

from ..conftest import load_script


def load_bench():
    return load_script("bench_precision")


@pytest.mark.parametrize("layout_name", ["warm-up LoRA", "FedLEASE mixture"])
def test_each_layout_trains_every_adapter_it_holds(tiny_config, layout_name):
    bench = load_bench()
    clients = load_clients(tiny_config)
    trainer = build_trainers(tiny_config, clients[:1])[clients[0].client_id]
    layout = bench.LAYOUTS[layout_name]
    state = bench.initial_state(trainer, layout, tiny_config.lora.rank)
    trained, metrics = trainer.train(state, layout, seed=0)
    assert metrics["train_tokens"] > 0
    changed = {key for key in state if key.startswith("adapter.")
               and not (trained[key] == state[key]).all()}
    expected_parts = {"lora_A", "lora_B"} | ({"router"} if layout.router_slots else set())
    assert {key.rsplit(".", 1)[1] for key in changed} == expected_parts
