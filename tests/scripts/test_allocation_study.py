"""scripts/allocation_study.py: its warm-up is FedLEASE's, so the clustering it reports for
warm-up w is the one a run with ``warmup_rounds = w`` makes."""

import json
import sys

from fedlease.config import dump_toml
from fedlease.configure import with_overrides
from fedlease.reporting.summary import clustering_ari
from fedlease.transports.simulator import run_simulation

from ..conftest import load_script


def test_study_reports_what_a_run_clusters(tiny_config, tmp_path, monkeypatch):
    tiny_config.federation.allocation = "lora-b"
    config_file = tmp_path / "study.toml"
    config_file.write_text(dump_toml(tiny_config))
    out = tmp_path / "study.json"
    monkeypatch.setattr(sys, "argv", ["allocation_study.py", "--config", str(config_file),
                                      "--seeds", "0", "--warmups", "1", "--noise", "0.05",
                                      "--epsilon", "8", "--out", str(out)])
    load_script("allocation_study", folder="scripts").main()
    seed = json.loads(out.read_text())["results"]["0"]
    assert {"embedding", "embedding, noise 0.05", "embedding, DP epsilon 8", "lora-b",
            "hybrid"} <= set(seed)

    for signal, warmup in (("lora-b", "1"), ("embedding", "0")):
        tiny_config.federation.allocation = signal
        result = run_simulation(tiny_config, tmp_path / signal, progress=False)
        assert seed[signal][warmup]["num_experts"] == result.report["num_experts"]
        assert seed[signal][warmup]["ari_task"] == clustering_ari(result.tasks,
                                                                  result.report["assignment"])

    # the DP row: what a DP run's clients release and the server clusters
    private = with_overrides(tiny_config, {"privacy": {"epsilon": 8.0, "seeded_noise": True},
                                           "federation": {"rounds": 2}})
    result = run_simulation(private, tmp_path / "dp", progress=False)
    assert seed["embedding, DP epsilon 8"]["0"]["ari_task"] == clustering_ari(
        result.tasks, result.report["assignment"])
