import pytest
import torch

from fedlease.model.classifier import load_classifier
from fedlease.model.lora import AdapterLayout


def test_adapters_injected_by_name_and_state_round_trips(tiny_model_dir):
    model, tok = load_classifier(str(tiny_model_dir), ["query", "value"], 4, 8, 0.0)
    assert sorted(model.adapter_shapes()) == [
        f"encoder.layer.{i}.attention.self.{t}" for i in (0, 1) for t in ("query", "value")]
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, (d_in, d_out) in model.adapter_shapes().items():
        state[f"adapter.{name}.lora_A"] = torch.randn(2, 4, d_in, generator=gen)
        state[f"adapter.{name}.lora_B"] = torch.randn(2, d_out, 4, generator=gen)
        state[f"adapter.{name}.router"] = torch.randn(3, d_in, generator=gen)
    state.update(model.new_head(3, gen))
    model.load_state(state, AdapterLayout.fedlease(2, 1))
    out = model.state()
    assert out.keys() == state.keys()
    for k in state:
        torch.testing.assert_close(out[k], state[k])
    batch = tok(["the red cat", "a dog"], return_tensors="pt", padding=True)
    assert model(**batch).shape == (2, 3)
    # only the own expert (one of two), the routers and the head train; the encoder is frozen
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    expected = {"head.weight": (3, 32), "head.bias": (3,)}
    for name, (d_in, d_out) in model.adapter_shapes().items():
        expected[f"backbone.{name}.train_A"] = (1, 4, d_in)
        expected[f"backbone.{name}.train_B"] = (1, d_out, 4)
        expected[f"backbone.{name}.router"] = (3, d_in)
    assert trainable == expected


def test_unmatched_target_modules_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ValueError, match="match no nn.Linear"):
        load_classifier(str(tiny_model_dir), ["q_proj"], 4, 8, 0.0)


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        load_classifier(str(tmp_path / "nope"), ["query"], 4, 8, 0.0)
