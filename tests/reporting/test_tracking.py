import csv
import io
import json

import pytest

from fedlease.configure import load_config
from fedlease.errors import ConfigError
from fedlease.federation.engine import RunResult
from fedlease.reporting.outputs import RunWriter
from fedlease.reporting.tracking import CSV_FILE, metrics_csv

HISTORY = [
    {"round": r, "seconds": 1.0, "mean_accuracy": 0.5 + r / 10,
     "clients": {"a-0": {"accuracy": 0.5 + r / 10, "loss": 1.0 / r, "train_loss": 2.0 / r,
                         "upload_bytes": 100 * r},
                 "b-0": {"accuracy": 0.4 + r / 10, "loss": 0.5 / r}}}
    for r in (1, 2, 3)
]
TASKS = {"a-0": "a", "b-0": "b"}


def test_the_csv_has_a_row_per_round_and_client_and_every_metric():
    rows = list(csv.DictReader(io.StringIO(metrics_csv(HISTORY, TASKS))))
    assert len(rows) == 6
    assert list(rows[0]) == ["round", "client", "task", "accuracy", "loss", "train_loss",
                             "upload_bytes"]
    last_b = rows[-1]
    assert (last_b["round"], last_b["client"], last_b["task"]) == ("3", "b-0", "b")
    assert float(last_b["accuracy"]) == HISTORY[2]["clients"]["b-0"]["accuracy"]
    assert last_b["train_loss"] == ""  # b-0 reported none


def result_for(config, rounds):
    result = RunResult(config, TASKS)
    result.history = HISTORY[:rounds]
    return result


def test_each_round_goes_to_csv_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = load_config(overrides={"output": {"dir": str(tmp_path / "run"),
                                               "tensorboard": True}})
    writer = RunWriter(config.output.dir)
    writer.start(config)
    for rounds in (1, 2, 3):
        writer.write_round(result_for(config, rounds))
    writer.tensorboard.close()
    run_dir = tmp_path / "run"
    assert len((run_dir / CSV_FILE).read_text().splitlines()) == 1 + 6
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"accuracy/a-0", "accuracy/b-0", "loss/b-0", "train_loss/a-0",
            "mean/accuracy"} <= tags
    points = events.Scalars("accuracy/b-0")
    assert [p.step for p in points] == [1, 2, 3]
    assert [p.value for p in points] == pytest.approx([0.5, 0.6, 0.7])


def test_without_tensorboard_asked_no_event_files(tmp_path):
    config = load_config(overrides={"output": {"dir": str(tmp_path / "run")}})
    writer = RunWriter(config.output.dir)
    writer.start(config)
    writer.write_round(result_for(config, 2))
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"][-1]["round"] == 2


def test_tensorboard_asked_but_not_installed_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"output.tensorboard = True: expected false, or the "
                                          r"tensorboard package installed \(pip install "
                                          r"'fedlease\[tensorboard\]'\)"):
        load_config(overrides={"output": {"tensorboard": True}})
    assert load_config().output.tensorboard is False
