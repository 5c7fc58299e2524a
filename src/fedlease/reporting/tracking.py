"""Per-round metrics for experiment trackers: ``metrics.csv`` always, TensorBoard when asked.

``metrics.csv`` has one row per round and client (``round, client, task``, then every numeric
metric the clients reported, e.g. ``accuracy, loss, train_loss, upload_bytes``); each round's
rows are appended (the file is rewritten whole only when a round brings a new column, or when
a resumed run starts). With ``output.tensorboard = true`` (or
``fedlease run --tensorboard``), every round also goes to TensorBoard event files in
``OUT/tensorboard/``, one tag per metric and client (``accuracy/sentiment-0``) and one per mean
(``mean/accuracy``), so ``tensorboard --logdir runs/`` shows every run under its folder name
(``latest/tensorboard``).
TensorBoard is an optional extra: ``pip install fedlease[tensorboard]``.
"""

from __future__ import annotations

import csv
import io
import numbers
from pathlib import Path

CSV_FILE = "metrics.csv"
TB_DIR = "tensorboard"  # the event files' folder in the run folder


def csv_columns(history: list[dict]) -> list[str]:
    """Every numeric metric of the history's clients, sorted."""
    return sorted({name for entry in history for metrics in entry["clients"].values()
                   for name, value in metrics.items() if _is_number(value)})


def csv_rows(history: list[dict], tasks: dict[str, str], columns: list[str],
             header: bool = True) -> str:
    """Rows per (round, client) of ``history`` under ``columns`` (and the header line)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(["round", "client", "task", *columns])
    for entry in history:
        for cid, metrics in entry["clients"].items():
            writer.writerow([entry["round"], cid, tasks.get(cid, ""),
                             *(metrics.get(name, "") for name in columns)])
    return out.getvalue()


def metrics_csv(history: list[dict], tasks: dict[str, str]) -> str:
    """The history as CSV text: a row per (round, client), a column per numeric metric."""
    return csv_rows(history, tasks, csv_columns(history))


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class TensorBoardLog:
    """Scalars of every round in TensorBoard event files in ``folder``."""

    def __init__(self, folder: Path):
        # the config checks that tensorboard is installed (RunConfig.validate)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log_round(self, entry: dict) -> None:
        step = entry["round"]
        for name, value in entry.items():
            if name.startswith("mean_") and _is_number(value):
                self.writer.add_scalar(f"mean/{name.removeprefix('mean_')}", value, step)
        for cid, metrics in entry["clients"].items():
            for name, value in metrics.items():
                if _is_number(value):
                    self.writer.add_scalar(f"{name}/{cid}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
