"""The comparison of algorithms: one row per algorithm, mean ± std over seeds, and one plot.

Read from the run folders ``OUT/<algorithm>/seed-<s>/`` (``metrics.json`` + ``result.json``), so
a table can be rebuilt from finished runs without running anything.

Columns: final-round test accuracy per task and averaged over tasks (mean ± sample std over
seeds; ± 0 with one seed), upload bytes per client per round (averaged over all rounds and
clients, so FedLEASE's upload-free warm-up rounds count), trainable parameters per client (the
tensors the optimizer updates in the last round, adapters + router + head, averaged over
clients) and wall time per run (mean over seeds).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

from fedlease.reporting.outputs import atomic_write
from fedlease.reporting.plots import accuracy_curves, plot_accuracy
from fedlease.reporting.summary import task_accuracies

RESULT_FILE = "result.json"  # written last: its presence marks a finished run


@dataclass
class FinishedRun:
    algorithm: str
    seed: int
    tasks: dict[str, str]  # client id -> task
    history: list[dict]  # metrics.json's rounds
    wall_seconds: float

    @property
    def accuracies(self) -> dict[str, float]:
        """Final-round mean accuracy per task and ``overall`` (the mean over tasks)."""
        return task_accuracies(self.tasks, self.history[-1]["clients"])

    @property
    def upload_bytes(self) -> float:
        return mean(m.get("upload_bytes", 0) for r in self.history for m in r["clients"].values())

    @property
    def trainable_params(self) -> float:
        return mean(m["trainable_params"] for m in self.history[-1]["clients"].values())


def run_folder(out_dir: Path, algorithm: str, seed: int) -> Path:
    return Path(out_dir) / algorithm / f"seed-{seed}"


def is_finished(folder: Path) -> bool:
    return (folder / RESULT_FILE).is_file()


def mark_finished(folder: Path, algorithm: str, seed: int, wall_seconds: float) -> None:
    atomic_write(folder / RESULT_FILE, json.dumps(
        {"algorithm": algorithm, "seed": seed, "wall_seconds": wall_seconds}))


def load_run(folder: Path) -> FinishedRun:
    result = json.loads((folder / RESULT_FILE).read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    return FinishedRun(result["algorithm"], result["seed"], metrics["tasks"], metrics["rounds"],
                       result["wall_seconds"])


def _spread(values: list[float]) -> tuple[float, float]:
    return mean(values), (stdev(values) if len(values) > 1 else 0.0)


def comparison_rows(runs: list[FinishedRun]) -> list[dict]:
    """One row per algorithm, best average accuracy first, with its rank."""
    by_algorithm: dict[str, list[FinishedRun]] = {}
    for run in runs:
        by_algorithm.setdefault(run.algorithm, []).append(run)
    rows = []
    for algorithm, group in by_algorithm.items():
        accs = [run.accuracies for run in group]
        rows.append({
            "algorithm": algorithm,
            "seeds": len(group),
            "accuracy": {key: _spread([a[key] for a in accs]) for key in accs[0]},
            "upload_bytes": mean(run.upload_bytes for run in group),
            "trainable_params": mean(run.trainable_params for run in group),
            "wall_seconds": mean(run.wall_seconds for run in group),
        })
    rows.sort(key=lambda row: -row["accuracy"]["overall"][0])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _tasks(rows: list[dict]) -> list[str]:
    return [key for key in rows[0]["accuracy"] if key != "overall"]


def markdown_table(rows: list[dict]) -> str:
    tasks = _tasks(rows)
    header = (["rank", "algorithm"] + tasks
              + ["average", "upload B/client/round", "trainable params/client", "wall s", "seeds"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        accs = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in
                (row["accuracy"][key] for key in tasks + ["overall"])]
        cells = [str(row["rank"]), row["algorithm"], *accs, f"{row['upload_bytes']:,.0f}",
                 f"{row['trainable_params']:,.0f}", f"{row['wall_seconds']:.0f}",
                 str(row["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(rows: list[dict]) -> str:
    tasks = _tasks(rows)
    acc_columns = [f"{key}_{stat}" for key in tasks + ["average"] for stat in ("mean", "std")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "algorithm", *acc_columns, "upload_bytes_per_client_round",
                     "trainable_params_per_client", "wall_seconds", "seeds"])
    for row in rows:
        accs = [f"{v:.4f}" for key in tasks + ["overall"] for v in row["accuracy"][key]]
        writer.writerow([row["rank"], row["algorithm"], *accs, f"{row['upload_bytes']:.1f}",
                         f"{row['trainable_params']:.1f}", f"{row['wall_seconds']:.1f}",
                         row["seeds"]])
    return out.getvalue()


def ranking_note(rows: list[dict], focus: str = "fedlease") -> str:
    """Where ``focus`` ranks by average accuracy and its gap to the best other algorithm."""
    row = next((r for r in rows if r["algorithm"] == focus), None)
    others = [r for r in rows if r["algorithm"] != focus]
    if row is None or not others:
        return ""
    best = others[0]
    gap = 100 * (row["accuracy"]["overall"][0] - best["accuracy"]["overall"][0])
    where = ("level with" if round(gap, 1) == 0
             else f"{abs(gap):.1f} points {'above' if gap > 0 else 'below'}")
    return (f"{focus} ranks {row['rank']} of {len(rows)} by average accuracy, {where} the best "
            f"other algorithm ({best['algorithm']}).")


def mean_accuracy_curves(runs: list[FinishedRun]) -> dict[str, list[float]]:
    """Per algorithm: the average accuracy over tasks per round, averaged over seeds."""
    per_algorithm: dict[str, list[list[float]]] = {}
    for run in runs:
        per_algorithm.setdefault(run.algorithm, []).append(accuracy_curves(run)["overall"])
    return {alg: [mean(values) for values in zip(*curves, strict=True)]
            for alg, curves in per_algorithm.items()}


def write_comparison(runs: list[FinishedRun], out_dir: Path) -> list[dict]:
    """``results.md``, ``results.csv`` and ``accuracy_per_round.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    rows = comparison_rows(runs)
    seeds = sorted({run.seed for run in runs})
    note = ranking_note(rows)
    text = (f"# Comparison\n\nFinal-round test accuracy (%), mean ± std over seeds {seeds}.\n\n"
            f"{markdown_table(rows)}\n" + (f"\n{note}\n" if note else ""))
    atomic_write(out_dir / "results.md", text)
    atomic_write(out_dir / "results.csv", csv_table(rows))
    plot_accuracy(mean_accuracy_curves(runs), out_dir / "accuracy_per_round.png",
                  f"average accuracy per round (mean over {len(seeds)} seed(s))")
    return rows
