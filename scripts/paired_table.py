"""Paired per-seed differences of a ``fedlease compare`` folder against one algorithm.

A seed gives every algorithm the same clients' data, so the difference of two algorithms'
final-round accuracies within a seed removes the data's share of the noise. For every other
algorithm and every task (and the average over tasks): ``focus - other`` per seed, and their
mean ± sample std. Only seeds both algorithms finished count. Runs nothing.

    python scripts/paired_table.py runs/compare_mixture_glue --focus fedlease
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean, stdev

from fedlease.reporting.comparison import is_finished, load_run


def finished_scores(out_dir: Path) -> dict[str, dict[int, dict[str, float]]]:
    """algorithm -> seed -> task (and ``overall``) -> final-round accuracy, in %."""
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for folder in sorted(Path(out_dir).glob("*/seed-*")):
        if is_finished(folder):
            run = load_run(folder)
            scores.setdefault(run.algorithm, {})[run.seed] = {
                task: 100 * value for task, value in run.scores.items()}
    return scores


def paired(focus: dict[int, dict[str, float]], other: dict[int, dict[str, float]],
           task: str) -> tuple[list[float], float, float] | None:
    """The per-seed differences ``focus - other`` on ``task`` and their mean and std (0 with
    one seed); None without a seed in common."""
    seeds = sorted(set(focus) & set(other))
    if not seeds:
        return None
    diffs = [focus[s][task] - other[s][task] for s in seeds]
    return diffs, mean(diffs), stdev(diffs) if len(diffs) > 1 else 0.0


def paired_table(scores: dict[str, dict[int, dict[str, float]]], focus: str) -> str:
    """Markdown: a row per other algorithm, a column per task and the average."""
    if focus not in scores:
        raise SystemExit(f"no finished run of {focus!r}; found {sorted(scores)}")
    tasks = [t for t in next(iter(scores[focus].values())) if t != "overall"]
    lines = [f"| {focus} − | " + " | ".join([*tasks, "average (per seed)"]) + " | seeds |",
             "|---" * (len(tasks) + 3) + "|"]
    for name, runs in scores.items():
        if name == focus:
            continue
        cells = []
        for task in [*tasks, "overall"]:
            result = paired(scores[focus], runs, task)
            if result is None:
                cells.append("-")
                continue
            diffs, gap, spread = result
            cell = f"{gap:+.1f} ± {spread:.1f}"
            if task == "overall":
                cell += " (" + ", ".join(f"{d:+.1f}" for d in diffs) + ")"
            cells.append(cell)
        seeds = sorted(set(scores[focus]) & set(runs))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(seeds)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a fedlease compare output folder")
    parser.add_argument("--focus", default="fedlease", help="the algorithm compared against")
    args = parser.parse_args(argv)
    print(paired_table(finished_scores(args.folder), args.focus), end="")


if __name__ == "__main__":
    main()
