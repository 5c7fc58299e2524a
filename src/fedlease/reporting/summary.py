"""The end-of-run table: per client, per task, overall; and how well the clustering found tasks."""

from __future__ import annotations

from collections import defaultdict

from sklearn.metrics import adjusted_rand_score

from fedlease.privacy.report import summary_lines
from fedlease.reporting.traffic import run_traffic


def task_means(tasks: dict[str, str], final: dict[str, dict],
               metric: str = "accuracy") -> dict[str, float]:
    """Mean ``metric`` (a run's primary metric: ``result.metric``) per task, then
    ``"overall"`` = the mean over tasks; clients without a final result (dropped out of a
    deployed run) are left out."""
    by_task = defaultdict(list)
    for cid, task in tasks.items():
        if cid in final:
            by_task[task].append(final[cid][metric])
    out = {t: sum(v) / len(v) for t, v in by_task.items()}
    out["overall"] = sum(out.values()) / len(out)
    return out


def clustering_ari(tasks: dict[str, str], assignment: dict[str, int]) -> float:
    ids = sorted(assignment)
    return float(adjusted_rand_score([tasks[c] for c in ids], [assignment[c] for c in ids]))


def summary_table(result) -> str:
    final = result.final
    assignment = result.report.get("assignment", {})
    columns = result.columns  # the task's metrics, its primary one first
    # columns as wide as the longest client id and task name (long names stay aligned)
    id_width = max([16, *(len(cid) for cid in result.tasks)])
    task_width = max([14, *(len(task) for task in result.tasks.values())])
    label_width = id_width + task_width + 8
    lines = [f"{'client':<{id_width}} {'task':<{task_width}} {'expert':>6}"
             + "".join(f" {name:>11}" for name in columns)]
    for cid, task in result.tasks.items():
        expert = str(assignment.get(cid, "-"))
        if cid in final:
            values = "".join(f" {final[cid][name]:>11.3f}" for name in columns)
        else:
            values = f" {'no result':>11}"
        lines.append(f"{cid:<{id_width}} {task:<{task_width}} {expert:>6}{values}")
    lines.append("")
    means = {name: task_means(result.tasks, final, name) for name in columns}
    for task in means[result.metric]:
        lines.append(f"{'mean ' + task:<{label_width}}"
                     + "".join(f" {means[name][task]:>11.3f}" for name in columns))
    if assignment:
        lines.append(f"{'experts (clusters)':<{label_width}} {result.report['num_experts']:>11d}")
        ari = clustering_ari(result.tasks, assignment)
        lines.append(f"{'adjusted Rand index vs tasks':<{label_width}} {ari:>11.3f}")
    traffic = run_traffic(result.history, len(result.tasks))
    if traffic:
        for name, key in (("downloaded MB per client", "download_per_client"),
                          ("uploaded MB per client", "upload_per_client"),
                          ("downloaded MB in all", "download"),
                          ("uploaded MB in all", "upload")):
            lines.append(f"{name:<{label_width}} {traffic[key] / 1e6:>11.3f}")
    if getattr(result, "privacy", None):
        lines += summary_lines(result.privacy)
    lines.append(f"{'wall time (s)':<{label_width}} {result.wall_seconds:>11.1f}")
    return "\n".join(lines)


def summary_record(result) -> dict:
    """The final table as one JSON-able object (``fedlease run --json``): per client its task,
    expert and metrics, the means per task and overall, the clustering and the wall time."""
    final = result.final
    assignment = result.report.get("assignment", {})
    record = {
        "output_dir": result.config.output.dir,
        "algorithm": result.config.federation.algorithm,
        "rounds": len(result.history),
        "metric": result.metric,
        "clients": {cid: {"task": task, "expert": assignment.get(cid),
                          **{name: final[cid][name] for name in result.columns}}
                    for cid, task in result.tasks.items() if cid in final},
        "means": {name: task_means(result.tasks, final, name) for name in result.columns},
        "wall_seconds": result.wall_seconds,
    }
    if assignment:
        record["experts"] = result.report["num_experts"]
        record["adjusted_rand_index"] = clustering_ari(result.tasks, assignment)
    return record
