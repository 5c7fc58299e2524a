"""The privacy-utility table of docs/results.md, from a finished ``fedlease compare`` folder.

One row per algorithm and epsilon (variants ``NAME+privacy.epsilon=E``; no variant: inf): the
final-round mean accuracy over tasks (mean ± sample std over seeds), the most epsilon any
client spent (``privacy.json``), the adjusted Rand index of the allocation against the true
tasks (``clustering.json``; FedLEASE only) and the wall time per run. Runs nothing.

    python scripts/privacy_table.py runs/privacy
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import mean, stdev

from fedlease.reporting.comparison import is_finished, load_run
from fedlease.reporting.summary import clustering_ari


def variant_epsilon(name: str) -> float:
    """The ``privacy.epsilon=E`` of a variant name (inf without one)."""
    for part in name.split("+")[1:]:
        key, _, value = part.partition("=")
        if key == "privacy.epsilon":
            return float(value)
    return math.inf


def run_row(folder: Path) -> dict:
    run = load_run(folder)
    privacy = folder / "privacy.json"
    spent = (max(c["epsilon"] for c in json.loads(privacy.read_text())["clients"].values())
             if privacy.exists() else math.inf)
    clustering = folder / "clustering.json"
    assignment = (json.loads(clustering.read_text()).get("assignment")
                  if clustering.exists() else None)
    return {"accuracy": run.scores["overall"], "epsilon_spent": spent,
            "ari": clustering_ari(run.tasks, assignment) if assignment else None,
            "wall_seconds": run.wall_seconds}


def spread(values: list[float]) -> str:
    return f"{mean(values):.3f} ± {stdev(values) if len(values) > 1 else 0.0:.3f}"


def privacy_table(out_dir: Path) -> tuple[str, list[dict]]:
    rows = []
    for variant in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        runs = [run_row(f) for f in sorted(variant.glob("seed-*")) if is_finished(f)]
        if not runs:
            continue
        aris = [r["ari"] for r in runs if r["ari"] is not None]
        rows.append({"algorithm": variant.name.split("+")[0],
                     "epsilon": variant_epsilon(variant.name), "seeds": len(runs),
                     "accuracy": spread([r["accuracy"] for r in runs]),
                     "epsilon_spent": max(r["epsilon_spent"] for r in runs),
                     "ari": spread(aris) if aris else "-",
                     "wall_seconds": mean(r["wall_seconds"] for r in runs)})
    rows.sort(key=lambda r: (r["algorithm"], -r["epsilon"]))
    lines = ["| algorithm | epsilon | seeds | mean accuracy | most epsilon spent | ARI vs tasks "
             "| wall s / run |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['algorithm']} | {r['epsilon']:g} | {r['seeds']} | {r['accuracy']} | "
              f"{r['epsilon_spent']:.3f} | {r['ari']} | {r['wall_seconds']:.0f} |"
              for r in rows]
    return "\n".join(lines), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the fedlease compare output folder")
    args = parser.parse_args()
    table, _ = privacy_table(args.out)
    print(table)


if __name__ == "__main__":
    main()
