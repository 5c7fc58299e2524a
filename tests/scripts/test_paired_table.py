"""scripts/paired_table.py: per-seed differences against one algorithm, per task, over the
seeds both finished."""

import json

import pytest

from fedlease.reporting.comparison import mark_finished, run_folder

from ..conftest import load_script

TASKS = {"a-0": "a", "a-1": "a", "b-0": "b"}


def write_run(out, algorithm, seed, accuracies):
    folder = run_folder(out, algorithm, seed)
    folder.mkdir(parents=True)
    clients = {cid: {"accuracy": acc} for cid, acc in zip(TASKS, accuracies, strict=True)}
    (folder / "metrics.json").write_text(json.dumps({"tasks": TASKS,
                                                     "rounds": [{"clients": clients}]}))
    mark_finished(folder, algorithm, seed, 1.0)


def test_differences_are_paired_by_seed_and_per_task(tmp_path):
    write_run(tmp_path, "fedlease", 0, [0.8, 0.6, 0.5])  # a 70, b 50, average 60
    write_run(tmp_path, "fedlease", 1, [0.9, 0.9, 0.7])  # a 90, b 70, average 80
    write_run(tmp_path, "fedit", 0, [0.6, 0.6, 0.5])  # a 60: +10; b +0; average +5
    write_run(tmp_path, "fedit", 1, [0.9, 0.9, 0.4])  # a +0; b +30; average +15
    write_run(tmp_path, "ifca-lora", 1, [0.9, 0.9, 0.7])  # seed 1 only: +0
    (run_folder(tmp_path, "fedalt", 0)).mkdir(parents=True)  # unfinished: left out
    script = load_script("paired_table", folder="scripts")
    scores = script.finished_scores(tmp_path)
    assert set(scores) == {"fedlease", "fedit", "ifca-lora"}
    table = script.paired_table(scores, "fedlease")
    assert "| fedit | +5.0 ± 7.1 | +15.0 ± 21.2 | +10.0 ± 7.1 (+5.0, +15.0) | 2 |" in table
    assert "| ifca-lora | +0.0 ± 0.0 | +0.0 ± 0.0 | +0.0 ± 0.0 (+0.0) | 1 |" in table
    with pytest.raises(SystemExit, match="no finished run"):
        script.paired_table(scores, "fedalt")
