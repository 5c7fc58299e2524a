"""The attack table: honest clients' mean accuracy with 0, 1 and 2 malicious clients, per attack
and aggregation rule, FedLEASE (every attack) and FedIT (sign-flip), over seeds.

Each cell is an ordinary simulator run of ``--config`` (configs/attack.toml) with
``federation.algorithm``, ``federation.aggregation``, ``federation.seed``, ``attack.kind`` and
``attack.clients`` (the first 0, 1 or 2 of the config's list) changed, into
``OUT/<algorithm>/<rule>/<kind>-<count>/seed-<s>/``. A finished cell (``result.json``) is not
run again, so an interrupted study resumes. Runs ``--jobs`` cells at a time, one thread each.
Honest accuracy: the final round's mean over the clients the study never makes attackers (not
in the config's ``attack.clients``, the same clients in every cell); "attacked task": over
those of the task whose cluster the attackers poison (their own; the target's for a forged
embedding). Writes
``OUT/attack_table.json`` and prints the two tables as markdown.

    python scripts/attack_study.py --config configs/attack.toml --out runs/attack --seeds 0,1
    python scripts/attack_study.py --out runs/attack --table-only   # the tables of what ran
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from statistics import mean, stdev

RULES = ("mean", "median", "trimmed-mean")
# algorithm -> the attacks it is measured under
ATTACKS = {"fedlease": ("sign-flip", "scale", "label-flip", "forged-embedding"),
           "fedit": ("sign-flip",)}
COUNTS = (0, 1, 2)


def cells(seeds: list[int]) -> list[tuple[str, str, str, int, int]]:
    """(algorithm, rule, kind, count, seed); count 0 is one cell per rule (kind "none").
    Row by row (no attack, then sign-flip for both algorithms, then FedLEASE's other attacks),
    every rule and seed of a row before the next: a study stopped early has whole rows."""
    rows = [(algorithm, kind, count)
            for kind in ("none", *ATTACKS["fedlease"]) for algorithm, kinds in ATTACKS.items()
            if kind == "none" or kind in kinds
            for count in (COUNTS[:1] if kind == "none" else COUNTS[1:])]
    return [(algorithm, rule, kind, count, seed)
            for algorithm, kind, count in rows for rule in RULES for seed in seeds]


def cell_folder(out: Path, algorithm: str, rule: str, kind: str, count: int, seed: int) -> Path:
    return out / algorithm / rule / f"{kind}-{count}" / f"seed-{seed}"


def cell_config(config_path: str, algorithm: str, rule: str, kind: str, count: int, seed: int):
    from fedlease.configure import load_config, with_overrides

    base = load_config(config_path)
    return with_overrides(base, {
        "federation": {"algorithm": algorithm, "aggregation": rule, "seed": seed},
        "attack": {"kind": "sign-flip" if kind == "none" else kind,
                   "clients": base.attack.clients[:count]},
    })


def run_cell(config_path: str, out: str, cell: tuple) -> float:
    """One cell, in a worker process with one thread; returns its wall seconds."""
    import torch

    from fedlease.reporting.comparison import is_finished, mark_finished
    from fedlease.transports.simulator import run_simulation

    torch.set_num_threads(1)
    folder = cell_folder(Path(out), *cell)
    if is_finished(folder):
        return 0.0
    resume = (folder / "checkpoint").is_dir()
    start = time.perf_counter()
    config = cell_config(config_path, *cell)
    run_simulation(config, folder, progress=False, resume=resume, overwrite=not resume)
    seconds = time.perf_counter() - start
    mark_finished(folder, f"{cell[0]}/{cell[1]}/{cell[2]}-{cell[3]}", cell[4], seconds)
    return seconds


def honest_accuracy(folder: Path, study_attackers: list[str]) -> tuple[float, dict]:
    """The final round's mean accuracy of the clients the study never makes attackers, and
    per task of theirs."""
    metrics = json.loads((folder / "metrics.json").read_text())
    honest = {cid: m["accuracy"] for cid, m in metrics["rounds"][-1]["clients"].items()
              if cid not in study_attackers}
    tasks = metrics["tasks"]
    by_task = {task: mean(a for cid, a in honest.items() if tasks[cid] == task)
               for task in sorted({tasks[cid] for cid in honest})}
    return mean(honest.values()), by_task


def spread(values: list[float]) -> str:
    sd = stdev(values) if len(values) > 1 else 0.0
    return f"{mean(values):.3f} ± {sd:.3f}"


def table(out: Path, seeds: list[int], config_path: str) -> dict:
    """Per (algorithm, kind, count, rule): the honest accuracies over the finished seeds, of
    all honest clients and of those of the attacked task (the attackers' own task; for a
    forged embedding, the target's). Clients the study ever makes attackers are left out of
    every cell, so that the cells average the same clients."""
    from fedlease.configure import load_config
    from fedlease.reporting.comparison import is_finished

    study = load_config(config_path).attack
    rows: dict = {}
    for algorithm, rule, kind, count, seed in cells(seeds):
        folder = cell_folder(out, algorithm, rule, kind, count, seed)
        if not is_finished(folder):
            continue
        overall, by_task = honest_accuracy(folder, study.clients)
        tasks = json.loads((folder / "metrics.json").read_text())["tasks"]
        attacked = tasks[study.target if kind == "forged-embedding" else study.clients[0]]
        entry = rows.setdefault(f"{algorithm}|{kind}|{count}", {}).setdefault(
            rule, {"honest": [], "attacked_task": [], "by_task": [], "seeds": []})
        entry["honest"].append(overall)
        entry["attacked_task"].append(by_task[attacked])
        entry["by_task"].append(by_task)
        entry["seeds"].append(seed)
    return rows


def markdown(rows: dict, key: str) -> str:
    lines = ["| algorithm | attack | malicious | " + " | ".join(RULES) + " |",
             "|---|---|---|" + "---|" * len(RULES)]
    for name, by_rule in rows.items():
        algorithm, kind, count = name.split("|")
        cells_text = [spread(by_rule[r][key]) + f" (n={len(by_rule[r][key])})"
                      if r in by_rule else "not run" for r in RULES]
        lines.append(f"| {algorithm} | {kind if count != '0' else '-'} | {count} | "
                     + " | ".join(cells_text) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/attack.toml")
    parser.add_argument("--out", default="runs/attack")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    if not args.table_only:
        todo = cells(seeds)
        os.environ["OMP_NUM_THREADS"] = "1"
        start = time.perf_counter()
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_cell, args.config, str(out), cell): cell
                       for cell in todo}
            for future in as_completed(futures):
                name = "/".join(map(str, futures[future]))
                try:
                    print(f"{name}: {future.result():.1f} s", flush=True)
                except Exception as err:  # a failed cell is reported, the others go on
                    print(f"{name}: FAILED: {type(err).__name__}: {err}", flush=True)
        print(f"all cells: {time.perf_counter() - start:.0f} s wall")
    rows = table(out, seeds, args.config)
    (out / "attack_table.json").write_text(json.dumps(rows, indent=1))
    print("honest clients' mean accuracy (final round)\n" + markdown(rows, "honest"))
    print("\nhonest clients of the attacked task\n" + markdown(rows, "attacked_task"))


if __name__ == "__main__":
    main()
