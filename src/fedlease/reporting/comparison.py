"""The comparison of algorithms: one row per algorithm, mean ± std over seeds, and one plot.

Read from the run folders ``OUT/<algorithm>/seed-<s>/`` (``metrics.json`` + ``result.json``), so
a table can be rebuilt from finished runs without running anything.

Columns: the final-round primary metric (accuracy; ROUGE-L for generation) per task and averaged
over tasks (mean ± sample std over seeds; ± 0 with one seed), bytes downloaded and uploaded per
client per round (averaged over the rounds and the clients that took part in each, so FedLEASE's
upload-free warm-up rounds count; ``reporting.traffic``) and per client over the whole run,
trainable parameters per client (the tensors the optimizer updates in the last round, adapters +
router + head, averaged over clients) and wall time per run (mean over seeds). A run recorded
before downloads were counted shows "-" for them and its clients' own upload counts (the same
number when every client takes part in every round). Besides the curves per round, a plot of
final score against the bytes a client exchanges in a run (``<metric>_vs_bytes.png``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

from fedlease.errors import ConfigError
from fedlease.reporting.files import atomic_write
from fedlease.reporting.outputs import METRICS_FILE
from fedlease.reporting.plots import (
    METRIC_LABELS,
    plot_metric_curves,
    plot_score_vs_bytes,
    task_metric_curves,
)
from fedlease.reporting.summary import task_means
from fedlease.reporting.traffic import run_traffic

RESULT_FILE = "result.json"  # written last: its presence marks a finished run


@dataclass
class FinishedRun:
    algorithm: str
    seed: int
    tasks: dict[str, str]  # client id -> task
    history: list[dict]  # metrics.json's rounds
    wall_seconds: float
    metric: str = "accuracy"  # the primary metric of the run's task

    @property
    def scores(self) -> dict[str, float]:
        """Final-round mean primary metric per task and ``overall`` (the mean over tasks)."""
        return task_means(self.tasks, self.history[-1]["clients"], self.metric)

    @property
    def traffic(self) -> dict | None:
        return run_traffic(self.history, len(self.tasks))

    @property
    def upload_bytes(self) -> float:
        """Per client and round that it took part in."""
        if self.traffic:
            return self.traffic["upload_per_client_round"]
        return mean(m.get("upload_bytes", 0) for r in self.history for m in r["clients"].values())

    def traffic_value(self, key: str) -> float | None:
        return self.traffic[key] if self.traffic else None

    @property
    def trainable_params(self) -> float:
        """Over the clients that trained in the last round (under client sampling, the
        others were only evaluated)."""
        return mean(m["trainable_params"] for m in self.history[-1]["clients"].values()
                    if "trainable_params" in m)


def run_folder(out_dir: Path, algorithm: str, seed: int) -> Path:
    return Path(out_dir) / algorithm / f"seed-{seed}"


def is_finished(folder: Path) -> bool:
    return (folder / RESULT_FILE).is_file()


def mark_finished(folder: Path, algorithm: str, seed: int, wall_seconds: float) -> None:
    atomic_write(folder / RESULT_FILE, json.dumps(
        {"algorithm": algorithm, "seed": seed, "wall_seconds": wall_seconds}))


def load_run(folder: Path) -> FinishedRun:
    result = json.loads((folder / RESULT_FILE).read_text())
    metrics = json.loads((folder / METRICS_FILE).read_text())
    return FinishedRun(result["algorithm"], result["seed"], metrics["tasks"], metrics["rounds"],
                       result["wall_seconds"], metrics.get("metric", "accuracy"))


# reporting.traffic keys shown besides the upload per client and round
TRAFFIC_COLUMNS = ("download_per_client_round", "download_per_client", "upload_per_client")


def _mean_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else mean(values)


def _number(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def _spread(values: list[float]) -> tuple[float, float]:
    return mean(values), (stdev(values) if len(values) > 1 else 0.0)


def comparison_rows(runs: list[FinishedRun]) -> list[dict]:
    """One row per algorithm, best average score (primary metric) first, with its rank."""
    by_algorithm: dict[str, list[FinishedRun]] = {}
    for run in runs:
        by_algorithm.setdefault(run.algorithm, []).append(run)
    rows = []
    for algorithm, group in by_algorithm.items():
        scores = [run.scores for run in group]
        rows.append({
            "algorithm": algorithm,
            "seeds": len(group),
            "score": {key: _spread([a[key] for a in scores]) for key in scores[0]},
            "overall_by_seed": {run.seed: run.scores["overall"] for run in group},
            "upload_bytes": mean(run.upload_bytes for run in group),
            **{key: _mean_or_none([run.traffic_value(key) for run in group])
               for key in TRAFFIC_COLUMNS},
            "trainable_params": mean(run.trainable_params for run in group),
            "wall_seconds": mean(run.wall_seconds for run in group),
        })
    rows.sort(key=lambda row: -row["score"]["overall"][0])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _tasks(rows: list[dict]) -> list[str]:
    return [key for key in rows[0]["score"] if key != "overall"]


def markdown_table(rows: list[dict]) -> str:
    tasks = _tasks(rows)
    header = (["rank", "algorithm"] + tasks
              + ["average", "download B/client/round", "upload B/client/round",
                 "download MB/client/run", "upload MB/client/run", "trainable params/client",
                 "wall s", "seeds"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        scores = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in
                  (row["score"][key] for key in tasks + ["overall"])]
        cells = [str(row["rank"]), row["algorithm"], *scores,
                 _number(row["download_per_client_round"]), f"{row['upload_bytes']:,.0f}",
                 _number(row["download_per_client"], 1e6, 3),
                 _number(row["upload_per_client"], 1e6, 3),
                 f"{row['trainable_params']:,.0f}", f"{row['wall_seconds']:.0f}",
                 str(row["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(rows: list[dict]) -> str:
    tasks = _tasks(rows)
    score_columns = [f"{key}_{stat}" for key in tasks + ["average"] for stat in ("mean", "std")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "algorithm", *score_columns, "upload_bytes_per_client_round",
                     "download_bytes_per_client_round", "download_bytes_per_client",
                     "upload_bytes_per_client", "trainable_params_per_client", "wall_seconds",
                     "seeds"])
    for row in rows:
        scores = [f"{v:.4f}" for key in tasks + ["overall"] for v in row["score"][key]]
        traffic = ["" if row[key] is None else f"{row[key]:.1f}" for key in TRAFFIC_COLUMNS]
        writer.writerow([row["rank"], row["algorithm"], *scores, f"{row['upload_bytes']:.1f}",
                         *traffic,
                         f"{row['trainable_params']:.1f}", f"{row['wall_seconds']:.1f}",
                         row["seeds"]])
    return out.getvalue()


def ranking_note(rows: list[dict], metric: str, focus: str = "fedlease") -> str:
    """Where ``focus`` ranks by average ``metric``, its gap to the best other algorithm and to
    the best baseline (an algorithm not of its family: no name starting with ``focus``), and
    whether that lead exceeds the seed spread."""
    row = next((r for r in rows if r["algorithm"] == focus), None)
    others = [r for r in rows if r["algorithm"] != focus]
    if row is None or not others:
        return ""
    notes = [f"{focus} ranks {row['rank']} of {len(rows)} by average {METRIC_LABELS[metric]}, "
             f"{_gap(row, others[0])} the best other algorithm ({others[0]['algorithm']})."]
    baselines = [r for r in others if not r["algorithm"].startswith(focus)]
    if baselines and baselines[0] is not others[0]:
        notes.append(f"It is {_gap(row, baselines[0])} the best baseline "
                     f"({baselines[0]['algorithm']}).")
    if baselines:
        notes.append(seed_spread_note(row, baselines[0]))
    return " ".join(note for note in notes if note)


def _gap(row: dict, other: dict) -> str:
    gap = 100 * (row["score"]["overall"][0] - other["score"]["overall"][0])
    return ("level with" if round(gap, 1) == 0
            else f"{abs(gap):.1f} points {'above' if gap > 0 else 'below'}")


def seed_spread_note(row: dict, other: dict) -> str:
    """The per-seed difference of the two rows' averages (paired: a seed gives every algorithm
    the same data), mean ± sample std, and whether it stands clear of that spread."""
    seeds = sorted(set(row.get("overall_by_seed", {})) & set(other.get("overall_by_seed", {})))
    if len(seeds) < 2:
        return (f"With {len(seeds)} seed in common with {other['algorithm']}, the seed spread "
                "of the difference is not measured.")
    diffs = [100 * (row["overall_by_seed"][s] - other["overall_by_seed"][s]) for s in seeds]
    gap, spread = mean(diffs), stdev(diffs)
    verdict = ("larger than" if abs(gap) > spread else "within")
    return (f"Seed by seed (same data per seed) the difference to {other['algorithm']} is "
            f"{gap:+.1f} ± {spread:.1f} points over {len(seeds)} seeds: {verdict} the seed "
            "spread.")


def mean_score_curves(runs: list[FinishedRun]) -> dict[str, list[float]]:
    """Per algorithm: the average primary metric over tasks per round, averaged over seeds."""
    per_algorithm: dict[str, list[list[float]]] = {}
    for run in runs:
        per_algorithm.setdefault(run.algorithm, []).append(task_metric_curves(run)["overall"])
    return {alg: [mean(values) for values in zip(*curves, strict=True)]
            for alg, curves in per_algorithm.items()}


def write_comparison(runs: list[FinishedRun], out_dir: Path) -> list[dict]:
    """``results.md``, ``results.csv`` and ``<metric>_per_round.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    metrics = {run.metric for run in runs}
    if len(metrics) != 1:
        raise ConfigError(f"{out_dir}: its runs score different metrics {sorted(metrics)}; "
                          "compare runs of one task type (classification or generation) "
                          "in one output folder")
    metric = metrics.pop()
    label = METRIC_LABELS[metric]
    rows = comparison_rows(runs)
    seeds = sorted({run.seed for run in runs})
    note = ranking_note(rows, metric)
    text = (f"# Comparison\n\nFinal-round {label} (%), mean ± std over seeds {seeds}.\n\n"
            f"{markdown_table(rows)}\n" + (f"\n{note}\n" if note else ""))
    atomic_write(out_dir / "results.md", text)
    atomic_write(out_dir / "results.csv", csv_table(rows))
    plot_metric_curves(mean_score_curves(runs), out_dir / f"{metric}_per_round.png",
                  f"average {label} per round (mean over {len(seeds)} seed(s))", metric)
    costs = {row["algorithm"]: (row["download_per_client"] + row["upload_per_client"],
                                *row["score"]["overall"])
             for row in rows if row["download_per_client"] is not None}
    if costs:
        plot_score_vs_bytes(costs, out_dir / f"{metric}_vs_bytes.png",
                            f"final average {label} vs bytes per client "
                            f"({len(seeds)} seed(s))", metric)
    return rows
