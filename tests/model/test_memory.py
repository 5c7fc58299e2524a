"""Gradient checkpointing (same loss and gradients, the layers really recomputed) and the memory
estimate (its parts, what lowers it, and the refusal of a run that cannot fit)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from fedlease.configure import with_overrides
from fedlease.errors import ConfigError
from fedlease.model import memory
from fedlease.model.causal_lm import load_causal_lm
from fedlease.model.classifier import load_classifier
from fedlease.model.lora import AdapterLayout, init_lora
from fedlease.model.memory import (
    MemorySettings,
    ModelShape,
    check_fits,
    enable_gradient_checkpointing,
    estimate_memory,
    fitting_changes,
    read_model_shape,
)

LAYOUT = AdapterLayout.fedlease(2, 1)  # two experts and a router: every kind of adapter tensor


def mixture_state(model, layout: AdapterLayout, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (d_in, d_out) in model.adapter_shapes().items():
        parts = [init_lora(d_in, d_out, model.rank, gen) for _ in range(layout.num_experts)]
        state[f"adapter.{name}.lora_A"] = torch.cat([a for a, _ in parts])
        state[f"adapter.{name}.lora_B"] = torch.randn(layout.num_experts, d_out, model.rank,
                                                      generator=gen) * 0.1
        state[f"adapter.{name}.router"] = torch.randn(len(layout.router_slots), d_in,
                                                      generator=gen) * 0.1
    return state


def loss_and_grads(model, state, step):
    """One training step's loss and the gradients of every trainable tensor, dropout seeded."""
    model.load_state(state, LAYOUT)
    model.train()
    torch.manual_seed(0)
    loss = step(model)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.trainable_parameters()]


def causal_step(model):
    ids = torch.randint(4, 30, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row
    logits = model.answer_logits(ids, mask, 5)
    return nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, -5:].flatten())


def classifier_step(model):
    ids = torch.randint(5, 20, (3, 10), generator=torch.Generator().manual_seed(1))
    return model(ids, torch.ones_like(ids)).logsumexp(-1).mean()


@pytest.mark.parametrize("kind", ["generation", "classification"])
def test_checkpointing_gives_the_same_loss_and_gradients(kind, tiny_llama_dir, tiny_model_dir):
    """With dropout on (the LoRA's, and BERT's own): the recomputation replays its masks."""
    if kind == "generation":
        model, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj", "v_proj"], 2, 4.0, 0.1)
        step, inner = causal_step, model.backbone.model.layers[0].self_attn.q_proj
    else:
        model, _ = load_classifier(str(tiny_model_dir), ["query", "value"], 2, 4.0, 0.1)
        step, inner = classifier_step, model.backbone.encoder.layer[0].attention.self.query
    state = mixture_state(model, LAYOUT)
    head = {} if kind == "generation" else model.new_head(3, torch.Generator().manual_seed(0))
    state.update(head)
    calls = []
    inner.register_forward_hook(lambda *args: calls.append(1))  # an adapted part of layer 0
    plain_loss, plain_grads = loss_and_grads(model, state, step)
    assert len(calls) == 1
    enable_gradient_checkpointing(model.backbone)
    calls.clear()
    loss, grads = loss_and_grads(model, state, step)
    assert len(calls) == 2  # forward, then recomputed in the backward pass
    assert torch.equal(loss, plain_loss)
    # train_A, train_B and the router of 2 adapted linears in 2 layers, and the head's 2
    assert len(grads) == len(plain_grads) == 2 * 2 * 3 + len(head)
    for got, want in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_a_model_without_checkpointing_is_refused(tiny_llama_dir):
    model, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj"], 2, 4.0, 0.0)
    model.backbone.supports_gradient_checkpointing = False
    with pytest.raises(ConfigError, match="train.gradient_checkpointing = true: LlamaForCausalLM"):
        enable_gradient_checkpointing(model.backbone)


def test_a_run_with_checkpointing_matches_one_without(tiny_generation_config):
    from fedlease.transports.simulator import run_simulation

    config = with_overrides(tiny_generation_config, {"federation": {"rounds": 2}})
    plain = run_simulation(config, None, progress=False)
    ckpt = run_simulation(with_overrides(config, {"train": {"gradient_checkpointing": True}}),
                          None, progress=False)
    for a, b in zip(plain.history, ckpt.history, strict=True):
        assert a["mean_rouge_l"] == b["mean_rouge_l"]
        for cid, metrics in a["clients"].items():
            assert metrics["train_loss"] == pytest.approx(b["clients"][cid]["train_loss"],
                                                          rel=1e-5)


# -- the estimate ----------------------------------------------------------------------------

def settings(**changes) -> MemorySettings:
    base = MemorySettings(quantization="none", batch_size=8, sequence=40, answer=4, rank=4,
                          experts=4, checkpointing=False, activation_bytes=4)
    return dataclasses.replace(base, **changes)


def test_the_shape_is_read_without_weights(tiny_llama_dir):
    model, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj", "v_proj"], 2, 4.0, 0.0)
    shape = read_model_shape(str(tiny_llama_dir), "AutoModelForCausalLM", ["q_proj", "v_proj"])
    backbone = model.backbone
    total = sum(p.numel() for p in backbone.parameters())
    linear = sum(m.base.weight.numel() if hasattr(m, "base") else m.weight.numel()
                 for name, m in backbone.named_modules()
                 if name.endswith(("_proj", "q_proj", "v_proj")) and not name.endswith(".base"))
    assert shape.quantizable == linear
    assert shape.quantizable + shape.other == total
    assert shape.weight_bytes == 4 and shape.layers == 2 and shape.hidden == 32
    assert shape.kv_hidden == 16 and shape.vocab == backbone.config.vocab_size
    assert sorted(shape.adapted) == sorted(model.adapter_shapes().values())


def test_the_weights_are_counted_at_their_precision(tiny_llama_dir):
    shape = read_model_shape(str(tiny_llama_dir), "AutoModelForCausalLM", ["q_proj"])
    full = estimate_memory(shape, settings()).weights
    assert full == 4 * (shape.quantizable + shape.other)
    eight = estimate_memory(shape, settings(quantization="8bit")).weights
    four = estimate_memory(shape, settings(quantization="4bit")).weights
    assert eight == shape.quantizable + 4 * shape.other
    assert 4 * shape.other < four < eight


def test_checkpointing_and_smaller_batches_lower_the_activations(tiny_llama_dir):
    shape = read_model_shape(str(tiny_llama_dir), "AutoModelForCausalLM", ["q_proj"])
    base = estimate_memory(shape, settings())
    assert estimate_memory(shape, settings(checkpointing=True)).activations < base.activations
    assert estimate_memory(shape, settings(batch_size=4)).activations < base.activations
    assert estimate_memory(shape, settings(sequence=80)).activations > base.activations
    # the adapters: every expert's A and B and the router, and the trainable part three more
    # times (its gradient, AdamW's two moments) beside its own copy
    one = estimate_memory(shape, settings(experts=1))
    assert one.adapters < base.adapters


# SmolLM2-135M's shape (30 layers), with q_proj and v_proj adapted
SMOLLM2 = ModelShape(quantizable=30 * (576 * (576 + 2 * 192 + 576) + 3 * 576 * 1536),
                     other=49152 * 576 + 61 * 576, weight_bytes=4, hidden=576,
                     intermediate=1536, layers=30, kv_hidden=192, heads=9, vocab=49152,
                     eager_attention=False, adapted=((576, 576), (576, 192)) * 30)


def test_checkpointing_pays_off_with_many_layers():
    plain = estimate_memory(SMOLLM2, settings(batch_size=16, sequence=144))
    ckpt = estimate_memory(SMOLLM2, settings(batch_size=16, sequence=144, checkpointing=True))
    assert ckpt.activations < plain.activations / 5
    assert ckpt.weights == plain.weights and ckpt.adapters == plain.adapters


def test_a_config_that_cannot_fit_is_refused_with_the_settings_that_would(monkeypatch):
    shape = SMOLLM2
    s = settings(batch_size=64, sequence=120)
    need = estimate_memory(shape, s).total
    free = need - estimate_memory(shape, s).activations // 2  # half the activations too many
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    with pytest.raises(ConfigError) as err:
        check_fits(shape, s, "cpu", enforce=True)
    message = str(err.value)
    assert "\n" not in message and message.startswith("train.device = 'cpu': the estimated")
    assert "exceeds the" in message
    assert "train.gradient_checkpointing = true" in message
    assert "train.batch_size = 32" in message and "train.batch_size = 16" not in message
    for change in fitting_changes(shape, s, free):
        assert change.split(" (")[0] in message
    assert "check_memory = false" in message
    assert "free on cpu" in check_fits(shape, s, "cpu", enforce=False)


def test_nothing_fits_says_so(tiny_llama_dir, monkeypatch):
    shape = read_model_shape(str(tiny_llama_dir), "AutoModelForCausalLM", ["q_proj"])
    monkeypatch.setattr(memory, "free_memory", lambda device: 1000)
    with pytest.raises(ConfigError, match="no setting of gradient checkpointing"):
        check_fits(shape, settings(), "cpu", enforce=True)


def test_a_run_that_cannot_fit_is_refused_before_training_and_writes_nothing(
        tiny_generation_config, monkeypatch, tmp_path, capsys):
    from fedlease.transports.simulator import run_simulation

    monkeypatch.setattr(memory, "free_memory", lambda device: 10_000)
    out = tmp_path / "refused"
    with pytest.raises(ConfigError, match="estimated peak memory of one training process"):
        run_simulation(tiny_generation_config, out, progress=False)
    assert not out.exists() or not any(out.iterdir())
    config = with_overrides(tiny_generation_config, {"train": {"check_memory": False},
                                                     "federation": {"rounds": 2}})
    run_simulation(config, out, progress=False)  # runs anyway, and says so beforehand
    assert "free on cpu: 0.0 MiB" in capsys.readouterr().err


def test_a_model_whose_config_cannot_be_read_is_left_to_the_loader(tmp_path):
    """No estimate (said so), and the loader's own one-line error names the folder."""
    from fedlease.configure import load_config
    from fedlease.tasks.loading import load_base_model, memory_line

    (tmp_path / "empty").mkdir()
    config = load_config(overrides={"model": {"path": str(tmp_path / "empty")}})
    assert memory_line(config, config.model.path, "AutoModel", 64).startswith(
        "no memory estimate for this model (")
    with pytest.raises(ConfigError, match="not a loadable local model directory"):
        load_base_model(config)
