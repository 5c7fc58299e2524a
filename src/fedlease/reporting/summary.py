"""The end-of-run table: per client, per task, overall; and how well the clustering found tasks."""

from __future__ import annotations

from collections import defaultdict

from sklearn.metrics import adjusted_rand_score


def task_accuracies(tasks: dict[str, str], final: dict[str, dict]) -> dict[str, float]:
    """Mean accuracy per task, then ``"overall"`` = the mean over tasks; clients without a final
    result (dropped out of a deployed run) are left out."""
    by_task = defaultdict(list)
    for cid, task in tasks.items():
        if cid in final:
            by_task[task].append(final[cid]["accuracy"])
    out = {t: sum(v) / len(v) for t, v in by_task.items()}
    out["overall"] = sum(out.values()) / len(out)
    return out


def clustering_ari(tasks: dict[str, str], assignment: dict[str, int]) -> float:
    ids = sorted(assignment)
    return float(adjusted_rand_score([tasks[c] for c in ids], [assignment[c] for c in ids]))


def summary_table(result) -> str:
    final = result.final
    assignment = result.report.get("assignment", {})
    lines = [f"{'client':<16} {'task':<14} {'expert':>6} {'accuracy':>9}"]
    for cid, task in result.tasks.items():
        expert = str(assignment.get(cid, "-"))
        accuracy = f"{final[cid]['accuracy']:>9.3f}" if cid in final else f"{'no result':>9}"
        lines.append(f"{cid:<16} {task:<14} {expert:>6} {accuracy}")
    lines.append("")
    for task, acc in task_accuracies(result.tasks, final).items():
        lines.append(f"{'mean ' + task:<38} {acc:>9.3f}")
    if assignment:
        lines.append(f"{'experts (clusters)':<38} {result.report['num_experts']:>9d}")
        ari = clustering_ari(result.tasks, assignment)
        lines.append(f"{'adjusted Rand index vs tasks':<38} {ari:>9.3f}")
    lines.append(f"{'wall time (s)':<38} {result.wall_seconds:>9.1f}")
    return "\n".join(lines)
