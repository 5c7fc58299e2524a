"""Plots of a run: what people would rather look at than read."""

from __future__ import annotations

import io
import math
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy.cluster.hierarchy import dendrogram, linkage  # noqa: E402
from scipy.spatial.distance import squareform  # noqa: E402

from fedlease.algorithms.clustering import SIGNALS, AllocationSignal
from fedlease.errors import OutputError
from fedlease.reporting.files import atomic_write_bytes
from fedlease.tasks import METRIC_LABELS

MAX_PLOT_INCHES = 40  # widest plot drawn (a thousand clients would make a 450-inch bar chart)
MAX_NAMED_CLIENTS = 80  # beyond it, per-client plots drop the client names


def _save(fig, path: Path) -> None:
    """Render in memory, then write the file whole (``OutputError`` naming it if that fails)."""
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue())


def plot_dendrogram(distance: np.ndarray, names: list[str], path: Path,
                    signal: AllocationSignal = SIGNALS["lora-b"]) -> None:
    fig, ax = plt.subplots(figsize=(min(max(6, 0.45 * len(names)), MAX_PLOT_INCHES), 4))
    condensed = squareform(np.asarray(distance), checks=False)
    dendrogram(linkage(condensed, method="average"), ax=ax, leaf_rotation=90,
               labels=names if len(names) <= MAX_NAMED_CLIENTS else None,
               no_labels=len(names) > MAX_NAMED_CLIENTS)
    ax.set_ylabel(f"{signal.distance_name}  (average linkage)")
    ax.set_title(f"Clients clustered by {signal.title}")
    _save(fig, path)


def plot_distance_heatmap(distance: np.ndarray, names: list[str], path: Path,
                          signal: AllocationSignal = SIGNALS["lora-b"]) -> None:
    size = min(max(5, 0.4 * len(names)), MAX_PLOT_INCHES / 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(distance, cmap="viridis")
    if len(names) <= MAX_NAMED_CLIENTS:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(im, ax=ax, label=signal.distance_name)
    ax.set_title(f"Distance between clients by {signal.title}")
    _save(fig, path)


def plot_silhouette(scores: dict[int, float], chosen: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = sorted(scores)
    ax.plot(ks, [scores[k] for k in ks], marker="o")
    if chosen in scores:
        ax.axvline(chosen, color="tab:red", linestyle="--", label=f"chosen K = {chosen}")
        ax.legend()
    ax.set_xticks(ks)
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("silhouette score")
    ax.set_title("Choosing the number of experts")
    _save(fig, path)


def plot_metric_curves(curves: dict[str, list[float]], path: Path, title: str,
                       metric: str = "accuracy") -> None:
    """One line per curve name (a task, an algorithm...), the metric against round."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():  # rounds without evaluation (NaN) left out
        rounds = [r for r, value in enumerate(values, 1) if not math.isnan(value)]
        ax.plot(rounds, [values[r - 1] for r in rounds], marker=".", label=name)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, path)


def plot_score_vs_bytes(points: dict[str, tuple[float, float, float]], path: Path, title: str,
                        metric: str = "accuracy") -> None:
    """One point per algorithm: ``(bytes per client in a run, mean score, std)``; the
    trade-off a user chooses on (bytes on a log scale: algorithms differ by orders)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (cost, score, spread) in points.items():
        ax.errorbar([cost], [score], yerr=[spread], marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("bytes per client in the run (download + upload)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, path)


def plot_label_histogram(data: dict, path: Path) -> None:
    """Training examples stacked by label (``task: label`` when the federation has several
    tasks; train and test for clients without labels, generation): one bar per client up to
    ``MAX_NAMED_CLIENTS`` clients, beyond it one bar per task summed over its clients, so the
    plot reads the same at ten thousand clients and costs one bar per task."""
    clients = data["clients"]
    several_tasks = len({c["task"] for c in clients.values()}) > 1
    per_client = len(clients) <= MAX_NAMED_CLIENTS
    groups = list(clients) if per_client else sorted({c["task"] for c in clients.values()})
    position = {name: i for i, name in enumerate(groups)}
    stacks: dict[str, np.ndarray] = {}  # stack name -> count per bar
    for cid, summary in clients.items():
        parts = summary.get("train_labels") or {"train": summary["train"],
                                                "test": summary["test"]}
        for label, count in parts.items():
            key = f"{summary['task']}: {label}" if several_tasks and "train_labels" in summary \
                else label
            bars = stacks.setdefault(key, np.zeros(len(groups)))
            bars[position[cid if per_client else summary["task"]]] += count
    fig, ax = plt.subplots(figsize=(min(max(6, 0.45 * len(groups) + 2), MAX_PLOT_INCHES), 4))
    colors = plt.get_cmap("tab20" if len(stacks) > 10 else "tab10")
    bottom = np.zeros(len(groups))
    for k, (label, counts) in enumerate(stacks.items()):
        ax.bar(range(len(groups)), counts, bottom=bottom, label=label, color=colors(k % 20))
        bottom += counts
    ax.set_xticks(range(len(groups)), groups, rotation=90 if per_client else 0,
                  fontsize=7 if per_client else 9)
    if not per_client:
        counts = Counter(c["task"] for c in clients.values())
        ax.set_xlabel(f"{len(clients)} clients, summed per task ("
                      + ", ".join(f"{task}: {counts[task]}" for task in groups) + ")")
    ax.set_ylabel("training examples" if any("train_labels" in c for c in clients.values())
                  else "examples")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title("Examples per client, by label" if per_client
                 else "Examples per task, by label")
    _save(fig, path)


def plot_cluster_tasks(assignment: dict[str, int], tasks: dict[str, str], path: Path,
                       algorithm: str = "fedlease") -> None:
    """One bar per cluster (expert): its clients, stacked by task; readable at any number of
    clients (the dendrogram and heat map are drawn only while the matrix is kept)."""
    clusters = sorted(set(assignment.values()))
    names = sorted({tasks[cid] for cid in assignment})
    counts = Counter((assignment[cid], tasks[cid]) for cid in assignment)
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(clusters) + 3), 4))
    colors = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    bottom = np.zeros(len(clusters))
    for k, task in enumerate(names):
        heights = np.array([counts[(c, task)] for c in clusters], dtype=float)
        ax.bar(range(len(clusters)), heights, bottom=bottom, label=task, color=colors(k % 20))
        bottom += heights
    ax.set_xticks(range(len(clusters)), [f"expert {c}" for c in clusters])
    ax.set_ylabel("clients")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title(f"{algorithm}: clients per cluster by task ({len(assignment)} clients)")
    _save(fig, path)


def task_metric_curves(result) -> dict[str, list[float]]:
    """Mean primary metric (accuracy, ROUGE-L) per task per round, and the mean over tasks as
    ``overall``; NaN for a round without evaluation (``federation.evaluate_every``)."""
    curves: dict[str, list[float]] = defaultdict(list)
    for entry in result.history:
        if entry.get("mean_" + result.metric, 0.0) is None:
            for name in (*dict.fromkeys(result.tasks.values()), "overall"):
                curves[name].append(math.nan)
            continue
        by_task = defaultdict(list)
        for cid, metrics in entry["clients"].items():
            by_task[result.tasks[cid]].append(metrics[result.metric])
        means = {t: sum(v) / len(v) for t, v in by_task.items()}
        for task, acc in means.items():
            curves[task].append(acc)
        curves["overall"].append(sum(means.values()) / len(means))
    return dict(curves)


def plot_run(result, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the plot folder {folder}: {err.strerror or err}") \
            from None
    metric = result.metric
    plot_metric_curves(task_metric_curves(result), folder / f"{metric}_per_round.png",
                  f"{result.config.federation.algorithm}: {metric} per round", metric)
    if result.data:
        plot_label_histogram(result.data, folder / "label_histogram.png")
    report = result.report
    if "assignment" in report:  # FedLEASE, IFCA
        plot_cluster_tasks(report["assignment"], result.tasks, folder / "clusters.png",
                           result.config.federation.algorithm)
    signal = SIGNALS[report.get("signal", "lora-b")]
    if report.get("silhouette"):
        scores = {int(k): v for k, v in report["silhouette"].items()}
        plot_silhouette(scores, report["num_experts"], folder / "silhouette.png")
    if "distance" in report:  # the matrix is kept while small (clustering.MATRIX_KEPT_UP_TO)
        names = [f"{c} ({report['assignment'][c]})" for c in report["clients"]]
        distance = np.array(report["distance"])
        plot_dendrogram(distance, names, folder / "dendrogram.png", signal)
        plot_distance_heatmap(distance, names, folder / "distance_heatmap.png", signal)
