"""``fedlease compare``: every chosen algorithm on the same setup and seeds, one table.

Each (algorithm, seed) pair is an ordinary ``run_simulation`` into ``OUT/<algorithm>/seed-<s>/``
with the same data, model, training settings and seed; only ``federation.algorithm`` and
``federation.seed`` change. An algorithm may be a *variant*, ``NAME+KEY=VALUE[+KEY=VALUE...]``:
the algorithm ``NAME`` with settings changed, e.g. ``fedlease+allocation=embedding`` or
``fedlease+allocation=embedding+warmup_rounds=0``; a key without a section is under
``[federation]``, ``train.precision=bf16`` names one; values are TOML (bare words are strings).
The variant's name is its row in the table and its folder.

A pair whose folder holds ``result.json`` (written after the run's other files) is finished and
is not run again, so an interrupted comparison resumes where it stopped; a pair interrupted
mid-run continues from its last checkpoint (one of another configuration, or damaged, is
reported and the pair runs again from the start). A finished pair is reused only if its
``config.toml`` (read with ``load_config``, so keys added since fill in with their defaults)
equals the configuration asked for, but for ``REUSABLE_CHANGES``; otherwise the comparison
stops before running anything and names the differences, unless ``rerun_stale`` asks to run
those pairs again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from fedlease.algorithms import ALGORITHMS
from fedlease.config import RunConfig, changed_fields, config_to_dict
from fedlease.config.schema import MACHINE_SETTINGS
from fedlease.configure import load_config, with_overrides
from fedlease.errors import CheckpointError, ConfigError
from fedlease.federation.checkpoint import MANIFEST, checkpoint_dir
from fedlease.reporting.comparison import (
    is_finished,
    load_run,
    mark_finished,
    run_folder,
    write_comparison,
)
from fedlease.reporting.outputs import CONFIG_FILE
from fedlease.transports.simulator import run_simulation

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# fields that may differ between a finished pair and the comparison that reuses it
REUSABLE_CHANGES = {("output", "dir"), ("train", "device")} | MACHINE_SETTINGS


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


def stale_reason(folder: Path, config: RunConfig) -> str | None:
    """Why the finished run in ``folder`` was made with another configuration than ``config``
    (None: it was not)."""
    try:
        saved = load_config(folder / CONFIG_FILE)
    except ConfigError as err:
        return f"its config.toml cannot be read ({err})"
    changed = changed_fields(config_to_dict(saved), config_to_dict(config), REUSABLE_CHANGES)
    if not changed:
        return None
    old, new = config_to_dict(saved), config_to_dict(config)
    return ", ".join(f"{name} = {old[s][k]!r} there, {new[s][k]!r} now"
                     for name in changed for s, k in [name.split(".", 1)])


def continue_pair(config: RunConfig, folder: Path, progress: bool) -> float | None:
    """Finish a pair interrupted after a checkpoint; its wall time: the rounds run before plus
    this run. None if there is no checkpoint to continue from."""
    manifest = checkpoint_dir(folder) / MANIFEST
    if not manifest.exists():
        return None
    try:
        done = int(json.loads(manifest.read_text(encoding="utf-8"))["round"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return warn_starting_over(folder, f"its checkpoint manifest is unreadable ({err})")
    try:
        result = run_simulation(config, folder, progress=progress, resume=True)
    except CheckpointError as err:
        return warn_starting_over(folder, str(err))
    return result.wall_seconds + sum(r["seconds"] for r in result.history[:done])


def warn_starting_over(folder: Path, reason: str) -> None:
    """Say why the pair in ``folder`` runs again from round 1 (its caller runs it)."""
    print(f"fedlease compare: {folder}: cannot continue from its checkpoint: {reason}; running "
          "it again from the start", file=sys.stderr)


def run_comparison(config: RunConfig, algorithms: list[str], seeds: list[int],
                   out_dir: str | Path, progress: bool = True,
                   rerun_stale: bool = False) -> list[dict]:
    """Run the missing pairs (and, with ``rerun_stale``, the finished ones of another
    configuration), then write the table and plot; returns the table rows."""
    out_dir = Path(out_dir)
    pairs = [(alg, seed) for alg in algorithms for seed in seeds]
    configs = {pair: pair_config(config, *pair, out_dir) for pair in pairs}  # all checked first
    finished = {pair for pair in pairs if is_finished(run_folder(out_dir, *pair))}
    stale = {pair: reason for pair in finished
             if (reason := stale_reason(run_folder(out_dir, *pair), configs[pair]))}
    if stale and not rerun_stale:
        listing = "\n  ".join(f"{run_folder(out_dir, *pair)}: {reason}"
                              for pair, reason in sorted(stale.items()))
        raise ConfigError(f"{out_dir} holds finished runs made with another configuration:\n  "
                          f"{listing}\npass --rerun-stale to run them again with this "
                          "configuration (their results are replaced), or choose another --out")
    bar = tqdm(pairs, desc="compare", unit="run", disable=not progress)
    for algorithm, seed in bar:
        folder = run_folder(out_dir, algorithm, seed)
        if (algorithm, seed) in finished and (algorithm, seed) not in stale:
            bar.set_postfix_str(f"{algorithm} seed {seed}: done before")
            continue
        bar.set_postfix_str(f"{algorithm} seed {seed}")
        wall_seconds = None
        if (algorithm, seed) not in stale:
            wall_seconds = continue_pair(configs[algorithm, seed], folder, progress)
        if wall_seconds is None:  # a new or stale pair: its folder's old outputs are replaced
            wall_seconds = run_simulation(configs[algorithm, seed], folder, progress=progress,
                                          overwrite=True).wall_seconds
        mark_finished(folder, algorithm, seed, wall_seconds)
    return write_comparison([load_run(run_folder(out_dir, *pair)) for pair in pairs], out_dir)
