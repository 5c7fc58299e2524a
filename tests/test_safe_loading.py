"""Nothing that runs code when loaded: no pickle, no unsafe torch.load, no remote model code.

(ruff's S301/S302/S506 rules catch pickle, marshal and yaml.load; this test covers what no ruff
rule does.)"""

import re
from pathlib import Path

import fedlease

SOURCES = sorted(Path(fedlease.__file__).parent.rglob("*.py"))
UNSAFE = {
    r"\bpickle\b|\bdill\b|\bjoblib\.load\b": "pickle-based serialisation",
    r"torch\.load\((?![^)]*weights_only\s*=\s*True)": "torch.load without weights_only=True",
    r"allow_pickle\s*=\s*True": "numpy with allow_pickle=True",
    r"trust_remote_code\s*=\s*True": "remote model code",
}


def test_sources_exist():
    assert len(SOURCES) > 10


def test_no_unsafe_loading_in_the_package():
    found = [f"{path.name}:{n}: {what}"
             for path in SOURCES
             for n, line in enumerate(path.read_text().splitlines(), 1)
             for pattern, what in UNSAFE.items() if re.search(pattern, line)]
    assert found == []


def test_the_patterns_catch_what_they_should():
    bad = ["torch.load(path)", "torch.load(p, map_location='cpu')", "import pickle",
           "np.load(f, allow_pickle=True)", "from_pretrained(p, trust_remote_code=True)"]
    assert all(any(re.search(p, line) for p in UNSAFE) for line in bad)
    assert not any(re.search(p, "torch.load(path, weights_only=True)") for p in UNSAFE)


def test_a_model_folder_with_only_pickled_weights_is_refused(tiny_model_dir, tmp_path):
    import shutil

    import pytest
    import torch
    from safetensors.torch import load_file

    from fedlease.errors import ConfigError
    from fedlease.model.classifier import load_classifier

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="model.path = .*safetensors"):
        load_classifier(str(folder), ["query"], 2, 4.0, 0.0)
