import time

import pytest
import torch

from fedlease.data.sources import load_source_clients
from fedlease.model.classifier import load_classifier
from fedlease.model.lora import AdapterLayout
from fedlease.model.precision import autocast_dtype
from fedlease.tasks.classification import ClassificationTrainer


@pytest.mark.parametrize("bf16_ok,precision,expected", [
    (True, "auto", torch.bfloat16),
    (False, "auto", torch.float16),
    (True, "fp32", None),
    (True, "fp16", torch.float16),
    (True, "bf16", torch.bfloat16),
])
def test_cuda_autocast_dtype(monkeypatch, bf16_ok, precision, expected):
    """The CUDA choice, checked without a GPU by answering the capability query."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert autocast_dtype("cuda", precision) is expected
    assert autocast_dtype("cuda:1", precision) is expected


def test_cpu_autocast_dtype():
    assert autocast_dtype("cpu") is None  # auto: fp32 on CPU
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16


def test_bf16_on_a_gpu_without_it_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match="does not support bf16"):
        autocast_dtype("cuda", "bf16")
    with pytest.raises(ValueError, match="train.precision"):
        autocast_dtype("cpu", "half")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_training_steps_update_the_state(tiny_config, dtype):
    """fp16 goes through the gradient scaler, bf16 does not; both must train (CPU autocast)."""
    config = tiny_config
    model, tokenizer = load_classifier(config.model.path, config.model.target_modules,
                                       config.lora.rank, config.lora.alpha, config.lora.dropout)
    client = load_source_clients(config.data, seed=0)[0]
    trainer = ClassificationTrainer(model, tokenizer, client, max_length=16, batch_size=8,
                                    local_epochs=1, lr=1e-2, weight_decay=0.0, autocast_dtype=dtype)
    layout = AdapterLayout.fedlease(2, own_expert=1)
    gen = torch.Generator().manual_seed(0)
    state = dict(trainer.new_head(0))
    for name, (d_in, d_out) in model.adapter_shapes().items():
        state[f"adapter.{name}.lora_A"] = torch.randn(2, 4, d_in, generator=gen) * 0.1
        state[f"adapter.{name}.lora_B"] = torch.randn(2, d_out, 4, generator=gen) * 0.1
        state[f"adapter.{name}.router"] = torch.randn(3, d_in, generator=gen) * 0.1
    new_state, metrics = trainer.train(state, layout, seed=0)
    assert metrics["train_steps"] == 3 and metrics["train_tokens"] > 0
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    key = next(k for k in state if k.endswith("lora_B"))
    assert not torch.equal(new_state[key][1], state[key][1])  # own expert trained
    assert torch.equal(new_state[key][0], state[key][0])  # the other expert frozen
    before = time.perf_counter()
    seconds = trainer.evaluate(new_state, layout)["eval_seconds"]
    assert 0 < seconds <= time.perf_counter() - before


def test_frozen_A_comes_back_from_training_unchanged(tiny_config):
    """FFA-LoRA's layout: a real local update changes B and leaves A bit-identical."""
    config = tiny_config
    model, tokenizer = load_classifier(config.model.path, config.model.target_modules,
                                       config.lora.rank, config.lora.alpha, config.lora.dropout)
    client = load_source_clients(config.data, seed=0)[0]
    trainer = ClassificationTrainer(model, tokenizer, client, max_length=16, batch_size=8,
                                    local_epochs=1, lr=1e-2, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    state = dict(trainer.new_head(0))
    for name, (d_in, d_out) in model.adapter_shapes().items():
        state[f"adapter.{name}.lora_A"] = torch.randn(1, 4, d_in, generator=gen) * 0.1
        state[f"adapter.{name}.lora_B"] = torch.zeros(1, d_out, 4)
    new_state, _ = trainer.train(state, AdapterLayout(train_A=False), seed=0)
    for key, value in state.items():
        if key.endswith("lora_A"):
            assert torch.equal(new_state[key], value)
        elif key.endswith("lora_B"):
            assert not torch.equal(new_state[key], value)
