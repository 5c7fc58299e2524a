"""The extension API: register_* and entry points reach the config, run and compare; the
local-loss hook; FedProx written outside the package (examples/fedprox_plugin), installed as a
package of its own and run through `fedlease compare`."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedlease import plugins
from fedlease.algorithms import ALGORITHMS
from fedlease.algorithms.aggregation import AGGREGATION_RULES, weighted_mean
from fedlease.algorithms.fedit import FedIT
from fedlease.configure import load_config, with_overrides
from fedlease.data.sources import SOURCES
from fedlease.errors import ConfigError
from fedlease.transports.simulator import run_simulation

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "fedprox_plugin"


@pytest.fixture
def registries():
    """Whatever a test registers is gone afterwards."""
    saved = [(registry, dict(registry._entries))
             for registry in (ALGORITHMS, SOURCES, AGGREGATION_RULES)]
    yield
    for registry, before in saved:
        registry._entries = before


def fedprox_module():
    spec = importlib.util.spec_from_file_location("fedlease_fedprox",
                                                  PLUGIN / "fedlease_fedprox.py")
    module = sys.modules["fedlease_fedprox"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_registered_algorithm_and_aggregation_reach_the_config(registries):
    class Mine(FedIT):
        name = "mine"

    assert plugins.register_algorithm(Mine) is Mine
    plugins.register_aggregation("weighted", weighted_mean)
    config = load_config(overrides={"federation": {"algorithm": "mine",
                                                   "aggregation": "weighted"}})
    assert config.federation.algorithm == "mine"
    assert ("mine", "") in [(n, d[:0]) for n, d in plugins.registry_listing("algorithms")]
    plugins.register_algorithm(Mine)  # the same class again: nothing changes

    class Other(FedIT):
        name = "mine"

    with pytest.raises(ConfigError, match="algorithm 'mine' is registered already"):
        plugins.register_algorithm(Other)
    with pytest.raises(ConfigError, match="expected a subclass"):
        plugins.register_algorithm(object)
    with pytest.raises(ConfigError, match="without spaces, '\\+'"):
        plugins.register_algorithm(type("Bad", (FedIT,), {"name": "a+b"}))
    with pytest.raises(ConfigError, match="expected a fedlease.data.sources.DataSource"):
        plugins.register_source("csv", lambda data, seed: [])


def test_a_broken_entry_point_is_named(monkeypatch):
    class Point:
        name, value, group, dist = "broken", "nowhere:Thing", "fedlease.algorithms", None

        def load(self):
            raise ImportError("No module named 'nowhere'")

    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "entry_points",
                        lambda group: [Point()] if group == "fedlease.algorithms" else [])
    with pytest.raises(ConfigError, match=r"plugin 'broken' \(fedlease.algorithms: "
                                          r"nowhere:Thing\) cannot be loaded: ImportError"):
        plugins.load_plugins()


def test_the_local_loss_hook_is_added_to_every_step(tiny_config, tmp_path, registries):
    """FedProx with mu = 0 is FedIT to the last bit; a large mu changes the local update."""
    module = fedprox_module()
    tiny_config = with_overrides(tiny_config, {"federation": {"rounds": 2}})
    free = type("FedProxFree", (module.FedProx,), {"name": "fedprox-free", "mu": 0.0})
    strong = type("FedProxStrong", (module.FedProx,), {"name": "fedprox-strong", "mu": 100.0})
    for cls in (free, strong):
        plugins.register_algorithm(cls)
    results = {name: run_simulation(with_overrides(tiny_config, {
        "federation": {"algorithm": name}, "output": {"dir": str(tmp_path / name)}}),
        tmp_path / name, progress=False) for name in ("fedit", "fedprox-free", "fedprox-strong")}

    def losses(name):
        return [c["train_loss"] for r in results[name].history for c in r["clients"].values()]

    assert losses("fedprox-free") == losses("fedit")
    assert losses("fedprox-strong") != losses("fedit")


def test_fedprox_installed_as_its_own_package_runs_through_compare(tiny_model_dir,
                                                                    tiny_federation, tmp_path):
    """pip installs examples/fedprox_plugin (offline, into a folder of its own); its entry point,
    and nothing else, makes `fedprox` an algorithm of `fedlease compare`."""
    source, target = tmp_path / "fedprox_plugin", tmp_path / "site"
    # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
                   check=True, capture_output=True, cwd=tmp_path)
    assert list(target.glob("fedlease_fedprox-*.dist-info/entry_points.txt"))
    config = tmp_path / "c.toml"
    config.write_text(f'[model]\npath = "{tiny_model_dir}"\nmax_length = 16\n'
                      f'[data]\nsource = "jsonl"\npath = "{tiny_federation}"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT / "src")])}
    out = tmp_path / "compare"
    done = subprocess.run([sys.executable, "-m", "fedlease", "compare", "--config", str(config),
                           "--algorithms", "fedit,fedprox", "--num-seeds", "1", "--rounds", "2",
                           "--set", "warmup_rounds=1",
                           "--out", str(out), "--quiet"], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = (out / "results.md").read_text()
    assert "| fedprox |" in table and "| fedit |" in table
    listed = subprocess.run([sys.executable, "-m", "fedlease", "list", "algorithms"],
                            capture_output=True, text=True, env=env, check=True).stdout
    assert "fedprox" in listed and "proximal term" in listed


def test_the_public_python_api_runs_a_config(tiny_model_dir, tiny_federation, tmp_path):
    import fedlease

    config = fedlease.load_config(overrides={
        "model": {"path": str(tiny_model_dir), "max_length": 16},
        "data": {"source": "jsonl", "path": str(tiny_federation)},
        "federation": {"algorithm": "fedit", "rounds": 1, "warmup_rounds": 0},
        "output": {"dir": str(tmp_path / "out")}})
    result = fedlease.run(config, progress=False)
    assert len(result.history) == 1 and (tmp_path / "out" / "summary.txt").exists()
