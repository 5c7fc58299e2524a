"""model.path as a hub id: resolved from a cache laid out as huggingface_hub lays it out
(models--org--name/snapshots/<commit>/..., refs/<revision>), offline; a download only with
model.download and never with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedlease.errors import ConfigError
from fedlease.model.hub import MODEL_FILES, is_hub_id, resolve_model_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "tiny-org/tiny-llama"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def cache_with(hub_cache: Path, model_dir: Path, repo: str = REPO, commit: str = COMMIT,
               ref: str = "main") -> Path:
    """``model_dir``'s files as the cached snapshot ``commit`` of ``repo``, ``ref`` naming it."""
    storage = hub_cache / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_llama_dir):
    """An offline HF_HOME whose hub cache holds the tiny LLaMA as tiny-org/tiny-llama."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache_with(cache, tiny_llama_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_ids_and_folders_are_told_apart():
    assert is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert is_hub_id("gpt2")
    assert not is_hub_id("/models/llama")
    assert not is_hub_id("./llama")
    assert not is_hub_id("a/b/c")
    assert not is_hub_id("org/..")


def test_a_local_folder_wins(tiny_llama_dir):
    assert resolve_model_path(str(tiny_llama_dir)) == str(tiny_llama_dir)


def test_a_cached_hub_id_resolves_offline_to_its_snapshot(hub_cache):
    folder = Path(resolve_model_path(REPO))
    assert folder == hub_cache / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
    assert (folder / "config.json").exists()


def test_a_revision_resolves_through_its_ref(hub_cache, tiny_llama_dir):
    other = "f" * 40
    cache_with(hub_cache, tiny_llama_dir, commit=other, ref="v2")
    assert Path(resolve_model_path(REPO, revision="v2")).name == other
    assert Path(resolve_model_path(REPO)).name == COMMIT


def test_a_hub_id_not_in_the_cache_while_offline_names_the_setting_and_the_fix(hub_cache):
    with pytest.raises(ConfigError) as err:
        resolve_model_path("other-org/absent", download=True)
    message = str(err.value)
    assert "\n" not in message
    assert "model.path = 'other-org/absent'" in message and "HF_HUB_OFFLINE=1" in message


def test_without_model_download_nothing_is_fetched(hub_cache, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []
    real = huggingface_hub.snapshot_download

    def record(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", record)
    with pytest.raises(ConfigError, match="model.download = true"):
        resolve_model_path("other-org/absent")
    assert [c["local_files_only"] for c in calls] == [True]


def test_a_download_fetches_safetensors_and_tokenizer_files_only(hub_cache, monkeypatch,
                                                                 tiny_llama_dir):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    fetched = {}

    def fake(repo_id, revision=None, local_files_only=False, allow_patterns=None):
        if local_files_only:
            return real(repo_id, revision=revision, local_files_only=True)
        fetched.update(repo=repo_id, patterns=allow_patterns)
        return str(cache_with(hub_cache, tiny_llama_dir, repo=repo_id))

    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    folder = resolve_model_path("new-org/model", download=True)
    assert (Path(folder) / "model.safetensors").exists()
    assert fetched == {"repo": "new-org/model", "patterns": MODEL_FILES}
    from fnmatch import fnmatch

    for unsafe in ("pytorch_model.bin", "modeling_custom.py", "model.gguf", "tf_model.h5"):
        assert not any(fnmatch(unsafe, p) for p in MODEL_FILES), unsafe
    for needed in ("model.safetensors", "model.safetensors.index.json", "config.json",
                   "tokenizer.json", "tokenizer.model", "vocab.txt", "chat_template.jinja"):
        assert any(fnmatch(needed, p) for p in MODEL_FILES), needed


def test_a_cached_hub_id_loads_through_hf_home_offline(tmp_path, tiny_llama_dir):
    """The standard environment variables, in a fresh interpreter: HF_HOME locates the cache,
    HF_HUB_OFFLINE=1 is respected; the run's model loads from the hub id."""
    cache_with(tmp_path / "hf" / "hub", tiny_llama_dir)
    code = ("from fedlease.model.causal_lm import load_causal_lm\n"
            f"model, tok = load_causal_lm({REPO!r}, ['q_proj'], 2, 4.0, 0.0)\n"
            "print(type(model.backbone).__name__, len(model.adapters))\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": SRC}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["LlamaForCausalLM", "2"]


def test_a_run_with_an_absent_hub_id_writes_nothing(hub_cache, tiny_generation_config,
                                                   tmp_path):
    from fedlease.configure import with_overrides
    from fedlease.transports.simulator import run_simulation

    out = tmp_path / "run"
    config = with_overrides(tiny_generation_config, {"model": {"path": "other-org/absent"}})
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=1"):
        run_simulation(config, out, progress=False)
    assert not out.exists() or not any(out.iterdir())


def test_a_revision_needs_a_hub_id(tiny_llama_dir):
    from fedlease.configure import load_config

    with pytest.raises(ConfigError, match="model.revision = 'v2'"):
        load_config(overrides={"model": {"path": str(tiny_llama_dir), "revision": "v2"}})
    load_config(overrides={"model": {"path": REPO, "revision": "v2"}})
