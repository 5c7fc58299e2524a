import json

import pytest
import torch
from safetensors.torch import load_file

import fedlease
from fedlease.export import export_model
from fedlease.saved_models import ModelFileError, load_saved_model

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

TEXTS = ["the red cat is on the mat", "a blue dog", "red"]


def encoder_batch(model):
    return model.tokenizer(TEXTS, padding=True, return_tensors="pt")


def mean_pooled_logits(hidden, mask, out_dir):
    """What classifier.json says: mean of last_hidden_state over the mask, then the head."""
    head = load_file(out_dir / "classifier.safetensors")
    mask = mask.unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return pooled @ head["weight"].t() + head["bias"]


def fedlease_logits(model, batch):
    with torch.no_grad():
        return model.model(**batch)


def base_logits(model, batch, out_dir):
    """The same client's head on the bare base model: what the adapters change."""
    base = transformers.AutoModel.from_pretrained(model.config.model.path).eval()
    with torch.no_grad():
        hidden = base(**batch).last_hidden_state
    return mean_pooled_logits(hidden, batch["attention_mask"], out_dir)


@pytest.mark.parametrize("algorithm", ["fedit", "feddpa", "ffa-lora", "fedsa-lora", "local",
                                       "ifca-lora"])
def test_a_peft_export_loads_with_peft_and_gives_the_same_logits(finished_run, tmp_path,
                                                                 algorithm):
    run_dir = finished_run(algorithm)
    out = export_model(load_saved_model(run_dir, "colors-1"), "peft", tmp_path / "peft")
    model = fedlease.load_client_model(run_dir, "colors-1")
    batch = encoder_batch(model)
    base = transformers.AutoModel.from_pretrained(model.config.model.path)
    adapted = peft.PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        hidden = adapted(**batch).last_hidden_state
    got = mean_pooled_logits(hidden, batch["attention_mask"], out)
    want = fedlease_logits(model, batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the adapters matter at this tolerance: without them the logits differ
    assert (base_logits(model, batch, out) - want).abs().max() > 1e-3
    config = json.loads((out / "adapter_config.json").read_text())
    experts = 2 if algorithm == "feddpa" else 1
    assert config["r"] == 4 * experts and config["lora_alpha"] == 16.0 * experts
    assert json.loads((out / "classifier.json").read_text())["labels"] == ["blue", "red"]


def test_a_generation_peft_export_gives_the_same_logits(finished_run, tmp_path):
    run_dir = finished_run("fedit", "generation")
    out = export_model(load_saved_model(run_dir, "animals-0"), "peft", tmp_path / "peft")
    model = fedlease.load_client_model(run_dir, "animals-0")
    batch = model.tokenizer(TEXTS, return_tensors="pt", padding=True)
    base = transformers.AutoModelForCausalLM.from_pretrained(model.config.model.path)
    adapted = peft.PeftModel.from_pretrained(base, out).eval()
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert not (out / "classifier.json").exists()
    with torch.no_grad():
        got = adapted(**batch).logits
        want = model.model.backbone(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("algorithm", ["fedit", "feddpa"])
def test_a_merged_export_loads_with_transformers_alone(finished_run, tmp_path, algorithm):
    run_dir = finished_run(algorithm)
    out = export_model(load_saved_model(run_dir, "animals-0"), "merged", tmp_path / "merged")
    model = fedlease.load_client_model(run_dir, "animals-0")
    batch = encoder_batch(model)
    merged = transformers.AutoModel.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer(TEXTS)["input_ids"] == model.tokenizer(TEXTS)["input_ids"]
    with torch.no_grad():
        hidden = merged(**batch).last_hidden_state
    torch.testing.assert_close(mean_pooled_logits(hidden, batch["attention_mask"], out),
                               fedlease_logits(model, batch), atol=1e-5, rtol=0)
    assert json.loads((out / "classifier.json").read_text())["labels"] == ["cat", "dog"]


def test_a_merged_generation_model_gives_the_same_logits(finished_run, tmp_path):
    run_dir = finished_run("fedit", "generation")
    out = export_model(load_saved_model(run_dir, "colors-0"), "merged", tmp_path / "merged")
    model = fedlease.load_client_model(run_dir, "colors-0")
    batch = model.tokenizer(TEXTS, return_tensors="pt", padding=True)
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, model.model.backbone(**batch).logits,
                                   atol=1e-5, rtol=0)


def test_a_fedlease_mixture_is_refused_as_peft_and_merged_naming_the_format(finished_run,
                                                                          tmp_path):
    saved = load_saved_model(finished_run("fedlease"), "colors-0")
    assert saved.layout.router_slots is not None and saved.layout.num_experts > 1
    for fmt in ("peft", "merged"):
        with pytest.raises(ModelFileError, match="--format fedlease"):
            export_model(saved, fmt, tmp_path / fmt)
        assert not (tmp_path / fmt).exists()


def test_a_fedlease_export_rebuilds_the_model_without_the_run_folder(finished_run, tmp_path):
    import shutil

    run_dir = finished_run("fedlease")
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    out = export_model(load_saved_model(copy, "animals-1"), "fedlease", tmp_path / "model")
    want = fedlease.load_client_model(copy, "animals-1").predict(TEXTS)
    shutil.rmtree(copy)
    exported = fedlease.load_client_model(out)
    assert exported.labels == ["cat", "dog"] and exported.saved.layout.router_slots
    assert exported.predict(TEXTS) == want


def test_server_experts_and_warmup_loras_export_as_peft(finished_run, tmp_path):
    run_dir = finished_run("fedlease")
    server = load_file(run_dir / "adapters" / "server.safetensors")
    num_experts = json.loads((run_dir / "run.json").read_text())["server"]["num_experts"]
    assert all(t.shape[0] == num_experts for t in server.values())
    for k in range(num_experts):
        out = export_model(load_saved_model(run_dir, expert=k), "peft", tmp_path / f"e{k}")
        exported = load_file(out / "adapter_model.safetensors")
        key = next(k for k in server if k.endswith(".lora_B"))
        module = key.removeprefix("adapter.").removesuffix(".lora_B")
        assert torch.equal(exported[f"base_model.model.{module}.lora_B.weight"], server[key][k])
        assert not (out / "classifier.json").exists()
    with pytest.raises(ModelFileError, match="experts 0..2|experts 0..1|experts 0..0"):
        load_saved_model(run_dir, expert=num_experts)
    with pytest.raises(ModelFileError, match="export it with --format peft or merged"):
        export_model(load_saved_model(run_dir, expert=0), "fedlease", tmp_path / "f")

    warmup = load_saved_model(run_dir, "colors-0", warmup=True)
    out = export_model(warmup, "peft", tmp_path / "warmup")
    base = transformers.AutoModel.from_pretrained(warmup.config.model.path)
    adapted = peft.PeftModel.from_pretrained(base, out).eval()
    from fedlease.inference import ClientModel

    model = ClientModel(warmup)
    batch = encoder_batch(model)
    with torch.no_grad():
        hidden = adapted(**batch).last_hidden_state
    torch.testing.assert_close(mean_pooled_logits(hidden, batch["attention_mask"], out),
                               fedlease_logits(model, batch), atol=1e-5, rtol=0)


def test_algorithms_without_server_experts_or_warmup_say_so(finished_run, tmp_path):
    run_dir = finished_run("local")
    with pytest.raises(ModelFileError, match="keeps no shared experts on the server"):
        load_saved_model(run_dir, expert=0)
    with pytest.raises(ModelFileError, match="has no warm-up LoRA"):
        load_saved_model(run_dir, "colors-0", warmup=True)


def test_export_refuses_a_folder_that_holds_files(finished_run, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ModelFileError, match="not an empty folder"):
        export_model(load_saved_model(finished_run("fedit"), "colors-0"), "peft",
                     tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_a_damaged_or_mismatched_export_is_a_clear_error(finished_run, tmp_path,
                                                         tiny_llama_dir):
    out = export_model(load_saved_model(finished_run("fedit"), "colors-0"), "fedlease",
                       tmp_path / "f")
    description = json.loads((out / "fedlease_model.json").read_text())
    del description["client"]["layout"]
    (out / "fedlease_model.json").write_text(json.dumps(description))
    with pytest.raises(ModelFileError, match="damaged model description .*'layout'"):
        fedlease.load_client_model(out)
    out = export_model(load_saved_model(finished_run("fedit"), "colors-0"), "fedlease",
                       tmp_path / "g")
    description = json.loads((out / "fedlease_model.json").read_text())
    description["config"]["model"]["path"] = str(tiny_llama_dir)  # another base model
    description["config"]["model"]["target_modules"] = ["q_proj", "v_proj"]
    (out / "fedlease_model.json").write_text(json.dumps(description))
    with pytest.raises(ModelFileError, match="colors-0: its weights do not fit the base model"):
        fedlease.load_client_model(out)
