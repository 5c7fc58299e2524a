import dataclasses
import json

import pytest
from safetensors.torch import load_file

from fedlease.algorithms import ALGORITHMS
from fedlease.configure import load_config
from fedlease.reporting.summary import summary_table
from fedlease.transports.simulator import run_simulation


def test_fedlease_generation_runs_end_to_end_and_reports_rouge_l(tiny_generation_config,
                                                                  tmp_path):
    out = tmp_path / "run"
    result = run_simulation(tiny_generation_config, out, progress=False)
    assert result.metric == "rouge_l"
    assert set(result.final) == {"colors-0", "colors-1", "animals-0", "animals-1"}
    for m in result.final.values():
        assert 0.0 <= m["exact_match"] <= m["rouge_l"] <= 1.0
        assert "accuracy" not in m
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "rouge_l"
    last = metrics["rounds"][-1]
    assert last["mean_rouge_l"] == pytest.approx(
        sum(m["rouge_l"] for m in last["clients"].values()) / 4)
    assert last["mean_exact_match"] == pytest.approx(
        sum(m["exact_match"] for m in last["clients"].values()) / 4)
    assert "mean_accuracy" not in last
    clustering = json.loads((out / "clustering.json").read_text())
    K = clustering["num_experts"]
    tensors = load_file(out / "adapters" / "colors-0.safetensors")
    assert not any(k.startswith("head.") for k in tensors)
    assert all(v.shape[0] == K for k, v in tensors.items() if k.endswith("lora_A"))
    assert (out / "plots" / "rouge_l_per_round.png").stat().st_size > 1000
    table = summary_table(result)
    assert "rouge_l" in table and "exact_match" in table and "mean colors" in table


@pytest.mark.slow
def test_smollm2_on_the_builtin_instruction_federation(tmp_path):
    """The real default generation model, two tasks, two clients each, two rounds."""
    config = load_config(overrides={
        "model": {"task": "generation", "max_length": 96, "max_new_tokens": 4},
        "data": {"tasks": ["sentiment", "uncertainty"], "clients_per_task": 2,
                 "train_per_client": 8, "test_per_client": 8},
        "train": {"batch_size": 8, "lr": 1e-3},
        "federation": {"rounds": 2, "warmup_rounds": 1, "max_experts": 2},
    })
    result = run_simulation(config, tmp_path / "run", progress=False)
    assert len(result.history) == 2
    assert result.report["num_experts"] == 2
    for m in result.final.values():
        assert 0.0 <= m["exact_match"] <= m["rouge_l"] <= 1.0
        assert 0 < m["train_loss"] < 20


def test_compare_ranks_generation_runs_by_rouge_l(tiny_generation_config, tmp_path):
    from fedlease.experiments.compare import run_comparison

    out = tmp_path / "compare"
    rows = run_comparison(tiny_generation_config, ["fedlease", "fedit"], [0], out,
                          progress=False)
    for row in rows:
        metrics = json.loads((out / row["algorithm"] / "seed-0" / "metrics.json").read_text())
        final = metrics["rounds"][-1]["clients"]
        by_task = {task: [final[c]["rouge_l"] for c in final if c.startswith(task)]
                   for task in ("colors", "animals")}
        overall = sum(sum(v) / len(v) for v in by_task.values()) / 2
        assert row["score"]["overall"][0] == pytest.approx(overall)
    text = (out / "results.md").read_text()
    assert "Final-round test ROUGE-L (%)" in text
    assert (out / "rouge_l_per_round.png").stat().st_size > 1000


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_runs_on_the_generation_task(tiny_generation_config, tmp_path,
                                                     algorithm):
    """The algorithms' client side calls only the declared trainer interface (IFCA's cluster
    choice reads ``train_loss``, which a generation trainer computes from its answer loss)."""
    config = dataclasses.replace(tiny_generation_config, federation=dataclasses.replace(
        tiny_generation_config.federation, algorithm=algorithm, rounds=2))
    result = run_simulation(config, tmp_path / "run", progress=False)
    assert len(result.history) == 2
    assert all(0.0 <= m["rouge_l"] <= 1.0 for m in result.final.values())


def test_builtin_instruction_tasks_run_end_to_end(tiny_generation_config, tmp_path):
    """data.source = "instructions": the shipped tasks reach training and ROUGE-L scoring, and
    the data report names their clients."""
    config = dataclasses.replace(tiny_generation_config, data=dataclasses.replace(
        tiny_generation_config.data, source="instructions", path="",
        tasks=["headline", "spelling"], clients_per_task=2, train_per_client=4,
        test_per_client=2))
    config.federation.rounds = 2
    result = run_simulation(config, tmp_path / "run", progress=False)
    assert result.tasks == {"headline-0": "headline", "headline-1": "headline",
                            "spelling-0": "spelling", "spelling-1": "spelling"}
    assert all(0.0 <= m["rouge_l"] <= 1.0 for m in result.final.values())
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert "headline-0" in json.dumps(data) and "spelling-1" in json.dumps(data)
