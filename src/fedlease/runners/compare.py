"""``fedlease compare``: every chosen algorithm on the same setup and seeds, one table.

Each (algorithm, seed) pair is an ordinary ``run_simulation`` into ``OUT/<algorithm>/seed-<s>/``
with the same data, model, training settings and seed; only ``federation.algorithm`` and
``federation.seed`` change. A pair whose folder holds ``result.json`` (written after the run's
other files) is finished and is not run again, so an interrupted comparison resumes where it
stopped; a half-written pair is run again from the start.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tqdm.auto import tqdm

from fedlease.algorithms import ALGORITHMS
from fedlease.config import ConfigError, RunConfig
from fedlease.reporting.comparison import (
    is_finished,
    load_run,
    mark_finished,
    run_folder,
    write_comparison,
)
from fedlease.runners.simulator import run_simulation


def parse_algorithms(text: str) -> list[str]:
    """``all`` or a comma-separated list of algorithm names."""
    if text.strip() == "all":
        return list(ALGORITHMS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALGORITHMS]
    if unknown or not names:
        raise ConfigError(f"--algorithms {text!r}: unknown {unknown}; expected 'all' or a "
                          f"comma-separated list of {', '.join(ALGORITHMS)}")
    return list(dict.fromkeys(names))


def pair_config(config: RunConfig, algorithm: str, seed: int, out_dir: Path) -> RunConfig:
    federation = dataclasses.replace(config.federation, algorithm=algorithm, seed=seed)
    output = dataclasses.replace(config.output, dir=str(run_folder(out_dir, algorithm, seed)))
    return dataclasses.replace(config, federation=federation, output=output).validate()


def run_comparison(config: RunConfig, algorithms: list[str], seeds: list[int],
                   out_dir: str | Path, progress: bool = True) -> list[dict]:
    """Run the missing pairs, then write the table and plot; returns the table rows."""
    out_dir = Path(out_dir)
    pairs = [(alg, seed) for alg in algorithms for seed in seeds]
    configs = {pair: pair_config(config, *pair, out_dir) for pair in pairs}  # all checked first
    bar = tqdm(pairs, desc="compare", unit="run", disable=not progress)
    for algorithm, seed in bar:
        folder = run_folder(out_dir, algorithm, seed)
        if is_finished(folder):
            bar.set_postfix_str(f"{algorithm} seed {seed}: done before")
            continue
        bar.set_postfix_str(f"{algorithm} seed {seed}")
        result = run_simulation(configs[algorithm, seed], folder, progress=progress)
        mark_finished(folder, algorithm, seed, result.wall_seconds)
    return write_comparison([load_run(run_folder(out_dir, *pair)) for pair in pairs], out_dir)
