#!/usr/bin/env python3
"""Cost per round of a generation run (default: examples/generation.toml on SmolLM2-135M).

Prints, per round, the wall seconds, the local-training seconds summed over clients and the
rest (evaluation: greedy generation and scoring), then the process CPU seconds and
the load average, since on a shared machine the wall time says as much about the neighbours as
about the run.

    python benchmarks/bench_generation.py [--config examples/generation.toml] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time

from fedlease.configure import load_config
from fedlease.transports.simulator import run_simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/generation.toml")
    parser.add_argument("--rounds", type=int, help="override federation.rounds")
    parser.add_argument("--out", help="also write the run's output folder here")
    args = parser.parse_args()
    overrides = {"federation": {"rounds": args.rounds}} if args.rounds else {}
    config = load_config(args.config, overrides)
    load_before = os.getloadavg()[0]
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    result = run_simulation(config, args.out, progress=False)
    cpu = time.process_time() - cpu_start
    wall = time.perf_counter() - wall_start
    clients = len(result.tasks)
    print(f"{clients} clients, {config.data.train_per_client} train / "
          f"{config.data.test_per_client} test examples each, batch {config.train.batch_size}, "
          f"{config.train.local_epochs} local epoch(s), torch threads "
          f"{__import__('torch').get_num_threads()}")
    print(f"{'round':>5} {'wall s':>8} {'train s':>8} {'eval+rest s':>12} "
          f"{result.metric:>8}")
    for entry in result.history:
        train = sum(m.get("train_seconds", 0.0) for m in entry["clients"].values())
        print(f"{entry['round']:>5} {entry['seconds']:>8.1f} {train:>8.1f} "
              f"{entry['seconds'] - train:>12.1f} {entry['mean_' + result.metric]:>8.3f}")
    rounds = len(result.history)
    print(f"whole run: {wall:.1f} s wall (model and data loading included), {cpu:.1f} s process "
          f"CPU, {cpu / rounds:.1f} CPU s per round, {cpu / rounds / clients:.1f} CPU s per "
          f"client-round; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
