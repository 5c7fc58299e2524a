"""data.json and the label histogram: what each client holds, written before training."""

import json

import pytest

from fedlease.cli import main
from fedlease.data.client_data import ClientData, Example
from fedlease.data.instructions import InstructionClientData, InstructionExample
from fedlease.reporting.data_report import data_report
from fedlease.reporting.plots import plot_label_histogram


def test_report_counts_every_label_of_every_client():
    client = ClientData("c-0", "t", ["a", "b", "c"], [Example("x", 0), Example("y", 0),
                                                     Example("z", 2)], [Example("w", 1)])
    assert data_report([client]) == {"clients": {"c-0": {
        "task": "t", "train": 3, "test": 1, "train_labels": {"a": 2, "b": 0, "c": 1},
        "test_labels": {"a": 0, "b": 1, "c": 0}}}}
    instructions = InstructionClientData("g-0", "g", [InstructionExample("i", "", "o")] * 2, [])
    assert data_report([instructions]) == {"clients": {"g-0": {"task": "g", "train": 2,
                                                               "test": 0}}}


def test_histogram_of_labelled_and_unlabelled_clients(tmp_path):
    labelled = {"clients": {"a-0": {"task": "a", "train": 3, "test": 1,
                                    "train_labels": {"x": 1, "y": 2}},
                            "b-0": {"task": "b", "train": 2, "test": 1,
                                    "train_labels": {"x": 2, "z": 0}}}}
    plot_label_histogram(labelled, tmp_path / "l.png")
    plot_label_histogram({"clients": {"g-0": {"task": "g", "train": 5, "test": 2}}},
                         tmp_path / "g.png")
    assert all((tmp_path / n).read_bytes()[:4] == b"\x89PNG" for n in ("l.png", "g.png"))


def write_config(tmp_path, model_dir, csv, **table) -> str:
    entries = "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    path = tmp_path / "c.toml"
    path.write_text(f'[model]\npath = "{model_dir}"\nmax_length = 16\n'
                    f'[data]\nsource = "datasets"\n[[data.datasets]]\npath = "{csv}"\n{entries}'
                    "[train]\nbatch_size = 16\n"
                    '[federation]\nalgorithm = "fedit"\nrounds = 1\n')
    return str(path)


def test_cli_run_on_a_partitioned_csv_writes_data_json_and_histogram(
        tiny_model_dir, colors_csv, tmp_path, capsys):
    pytest.importorskip("flwr_datasets")
    config = write_config(tmp_path, tiny_model_dir, colors_csv, partitioner="pathological",
                          classes_per_partition=1, num_partitions=4)
    out = tmp_path / "out"
    assert main(["run", "--config", config, "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "data.json").read_text())["clients"]
    assert list(data) == ["colors-0", "colors-1", "colors-2", "colors-3"]
    assert sum(c["train"] + c["test"] for c in data.values()) == 160
    assert all(sorted(c["train_labels"].values())[0] == 0 for c in data.values())  # 1 label
    assert (out / "plots" / "label_histogram.png").stat().st_size > 1000
    assert "colors-3" in (out / "summary.txt").read_text()


def test_cli_names_a_missing_column_before_training(tiny_model_dir, colors_csv, tmp_path,
                                                     capsys):
    pytest.importorskip("flwr_datasets")
    config = write_config(tmp_path, tiny_model_dir, colors_csv, text="sentence")
    out = tmp_path / "out"
    assert main(["run", "--config", config, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"data.datasets[0] ({colors_csv}): no column 'sentence'" in err
    assert "Traceback" not in err and not (out / "metrics.json").exists()


def test_generation_run_on_an_instruction_table(tiny_generation_config, tmp_path):
    pytest.importorskip("flwr_datasets")
    from fedlease.config import DatasetConfig
    from fedlease.transports.simulator import run_simulation

    from ..conftest import INSTRUCTIONS, planted_table

    table = planted_table(48)
    rows = {"instruction": [INSTRUCTIONS["colors"]] * 48, "input": table["text"],
            "output": table["label"], "domain": table["domain"]}
    lines = [json.dumps(dict(zip(rows, r, strict=True))) for r in zip(*rows.values(),
                                                                        strict=True)]
    (tmp_path / "ins.jsonl").write_text("\n".join(lines) + "\n")
    config = tiny_generation_config
    config.data.source = "datasets"
    config.data.datasets = [DatasetConfig(path=str(tmp_path / "ins.jsonl"),
                                          partitioner="natural", partition_by="domain",
                                          num_partitions=0)]
    config.federation.rounds = 2
    result = run_simulation(config, tmp_path / "out", progress=False)
    assert list(result.tasks) == ["ins-0", "ins-1", "ins-2"]
    assert all(0 <= m["rouge_l"] <= 1 for m in result.final.values())
    data = json.loads((tmp_path / "out" / "data.json").read_text())["clients"]
    assert [c["train"] + c["test"] for c in data.values()] == [16, 16, 16]
