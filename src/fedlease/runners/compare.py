"""``fedlease compare``: every chosen algorithm on the same setup and seeds, one table.

Each (algorithm, seed) pair is an ordinary ``run_simulation`` into ``OUT/<algorithm>/seed-<s>/``
with the same data, model, training settings and seed; only ``federation.algorithm`` and
``federation.seed`` change. An algorithm may be a *variant*, ``NAME+KEY=VALUE[+KEY=VALUE...]``:
the algorithm ``NAME`` with settings changed, e.g. ``fedlease+allocation=embedding`` or
``fedlease+allocation=embedding+warmup_rounds=0``; a key without a section is under
``[federation]``, ``train.precision=bf16`` names one; values are TOML (bare words are strings).
The variant's name is its row in the table and its folder.

A pair whose folder holds ``result.json`` (written after the run's other files) is finished and
is not run again, so an interrupted comparison resumes where it stopped; a half-written pair is
run again from the start.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

from fedlease.algorithms import ALGORITHMS
from fedlease.config import ConfigError, RunConfig, with_overrides
from fedlease.reporting.comparison import (
    is_finished,
    load_run,
    mark_finished,
    run_folder,
    write_comparison,
)
from fedlease.runners.simulator import run_simulation

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_algorithms(text: str) -> list[str]:
    """``all`` or a comma-separated list of algorithm names and variants (checked here)."""
    if text.strip() == "all":
        return list(ALGORITHMS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name.split("+", 1)[0] not in ALGORITHMS]
    if unknown or not names:
        raise ConfigError(f"--algorithms {text!r}: unknown {unknown}; expected 'all' or a "
                          f"comma-separated list of {', '.join(ALGORITHMS)}, each optionally "
                          "with +KEY=VALUE settings (e.g. fedlease+allocation=embedding)")
    for name in names:
        variant_overrides(name)
    return list(dict.fromkeys(names))


def variant_overrides(name: str) -> dict:
    """``{"section": {"key": value}}`` of a variant name's ``+KEY=VALUE`` parts."""
    overrides: dict = {}
    for part in name.split("+")[1:]:
        key, sep, text = part.partition("=")
        if not sep or not key or not text:
            raise ConfigError(f"--algorithms: {part!r} in {name!r}: expected KEY=VALUE")
        section, _, field = key.rpartition(".")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word: a string
        overrides.setdefault(section or "federation", {})[field] = value
    return overrides


def pair_config(config: RunConfig, algorithm: str, seed: int, out_dir: Path) -> RunConfig:
    """The configuration of one (algorithm or variant, seed) pair of the comparison."""
    overrides = variant_overrides(algorithm)
    overrides.setdefault("federation", {}).update(algorithm=algorithm.split("+", 1)[0],
                                                  seed=seed)
    overrides.setdefault("output", {})["dir"] = str(run_folder(out_dir, algorithm, seed))
    try:
        return with_overrides(config, overrides)
    except ConfigError as err:
        raise ConfigError(f"--algorithms {algorithm}: {err}") from None


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
