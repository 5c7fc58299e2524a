"""model.quantization: the frozen base's linear layers in 8 or 4 bits (bitsandbytes, on CPU),
adapters and heads in float32, trained through the quantized layers."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fedlease.errors import ConfigError
from fedlease.model.causal_lm import load_causal_lm
from fedlease.model.classifier import load_classifier
from fedlease.model.lora import AdapterLayout, init_lora
from fedlease.model.quantization import quantization_kwargs

LAYOUT = AdapterLayout()


def tiny_state(model, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (d_in, d_out) in model.adapter_shapes().items():
        A, B = init_lora(d_in, d_out, model.rank, gen)
        state[f"adapter.{name}.lora_A"], state[f"adapter.{name}.lora_B"] = A, B + 0.01
    return state


def test_none_changes_nothing():
    assert quantization_kwargs("none", "cpu") == {}


def test_missing_bitsandbytes_is_one_line_naming_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        quantization_kwargs("4bit", "cpu")
    assert "bitsandbytes" in str(err.value) and "fedlease[quant]" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_device_bitsandbytes_does_not_run_on_is_refused():
    pytest.importorskip("bitsandbytes", reason="the quant extra")
    with pytest.raises(ConfigError, match="train.device = 'mps'"):
        quantization_kwargs("8bit", "mps")


def test_a_platform_that_cannot_load_is_one_line(monkeypatch, tiny_llama_dir):
    pytest.importorskip("bitsandbytes", reason="the quant extra")
    import transformers

    def fail(*args, **kwargs):
        raise RuntimeError("no kernel for this CPU\nmore detail")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)
    with pytest.raises(ConfigError) as err:
        load_causal_lm(str(tiny_llama_dir), ["q_proj"], 2, 4.0, 0.0, quantization="4bit")
    assert str(err.value).startswith("model.quantization = '4bit': bitsandbytes cannot")
    assert "no kernel for this CPU" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_the_base_is_quantized_and_the_adapters_are_not(quantization, tiny_llama_dir):
    bnb = pytest.importorskip("bitsandbytes", reason="the quant extra")
    kind = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    full, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj", "v_proj"], 2, 4.0, 0.0)
    model, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj", "v_proj"], 2, 4.0, 0.0,
                              quantization=quantization)
    layers = model.backbone.model.layers
    assert isinstance(layers[0].self_attn.q_proj.base, kind)
    assert isinstance(layers[1].mlp.down_proj, kind)  # every base linear, not only the adapted
    assert not isinstance(model.backbone.lm_head, kind)  # the output layer stays whole
    state = tiny_state(model)
    model.load_state(state, LAYOUT)
    full.load_state(state, LAYOUT)
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    ids = torch.randint(4, 30, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        got = model.answer_logits(ids, mask, 4).float()
        want = full.answer_logits(ids, mask, 4).float()
    # the same model, within its quantization error
    assert torch.corrcoef(torch.stack([got.flatten(), want.flatten()]))[0, 1] > 0.9


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
@pytest.mark.parametrize("evaluated_first", [False, True])
def test_gradients_reach_every_adapter_through_the_quantized_layers(quantization, evaluated_first,
                                                                   tiny_llama_dir):
    """Also after an evaluation: bitsandbytes' CPU inference format must not stick."""
    pytest.importorskip("bitsandbytes", reason="the quant extra")
    model, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj", "v_proj"], 2, 4.0, 0.0,
                              quantization=quantization)
    model.load_state(tiny_state(model), LAYOUT)
    ids = torch.randint(4, 30, (2, 10), generator=torch.Generator().manual_seed(0))
    if evaluated_first:
        model.eval()
        with torch.no_grad():
            model.answer_logits(ids, torch.ones_like(ids), 4)
    model.train()
    logits = model.answer_logits(ids, torch.ones_like(ids), 4)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, -4:].flatten()) \
        .backward()
    grads = [p.grad for p in model.trainable_parameters()]
    assert len(grads) == 2 * 2 * 2  # A and B of q_proj and v_proj in both layers
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_a_quantized_classifier_keeps_its_head_in_float32(tiny_model_dir):
    """BERT's linears have biases: the layer that failed after an evaluation."""
    bnb = pytest.importorskip("bitsandbytes", reason="the quant extra")
    model, _ = load_classifier(str(tiny_model_dir), ["query", "value"], 2, 4.0, 0.0,
                               quantization="4bit")
    layer = model.backbone.encoder.layer[0]
    assert isinstance(layer.attention.self.query.base, bnb.nn.Linear4bit)
    state = {**tiny_state(model), **model.new_head(3, torch.Generator().manual_seed(0))}
    model.load_state(state, LAYOUT)
    assert model.head.weight.dtype == torch.float32
    ids = torch.randint(5, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        model(ids, torch.ones_like(ids))
    model.train()
    out = model(ids, torch.ones_like(ids))
    out.sum().backward()
    assert out.shape == (2, 3) and model.head.weight.grad is not None


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_a_4bit_run_trains_and_aggregates_as_a_full_one(task, tiny_config,
                                                        tiny_generation_config):
    """Same files, same kinds of metrics; the adapters train (their B moves off zero)."""
    pytest.importorskip("bitsandbytes", reason="the quant extra")
    from safetensors.torch import load_file

    from fedlease.configure import with_overrides
    from fedlease.transports.simulator import run_simulation

    base = tiny_config if task == "classification" else tiny_generation_config
    config = with_overrides(base, {"model": {"quantization": "4bit"},
                                   "federation": {"rounds": 2}})
    result = run_simulation(config, config.output.dir, progress=False)
    metric = "accuracy" if task == "classification" else "rouge_l"
    last = result.history[-1]
    assert 0.0 <= last[f"mean_{metric}"] <= 1.0
    client = next(iter(result.tasks))
    tensors = load_file(f"{config.output.dir}/adapters/{client}.safetensors")
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in tensors.items())
    assert all(v.dtype == torch.float32 for v in tensors.values())


def test_an_unknown_quantization_is_refused_by_the_config():
    from fedlease.configure import load_config

    with pytest.raises(ConfigError, match="model.quantization = '3bit': expected one of none, "
                                          "8bit, 4bit"):
        load_config(overrides={"model": {"quantization": "3bit"}})
