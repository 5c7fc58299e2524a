"""The wall-time cost of DP-SGD per client step: seconds per local step with ``[privacy]`` on
(Opacus' per-example gradients, clipping, noise) and off, and their ratio, in one run.

One client of the built-in federation on the default model, trained as ``fedlease run`` trains
it (``LocalTrainer.train``: 128 examples, batch 16, one epoch; DP: Poisson batches of expected
size 16, the same number of steps), with the plain one-LoRA layout and with the FedLEASE
mixture layout (4 experts, 7 router slots). DP and non-DP alternate, repetition by repetition,
so a shared or throttled machine slows both alike; the table gives the median seconds per step.

    python benchmarks/bench_privacy.py                 # CPU, one thread
    python benchmarks/bench_privacy.py --threads 2 --repeats 5 --json bench_privacy.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from fedlease.configure import load_config
from fedlease.tasks.loading import build_trainers, load_clients

sys.path.insert(0, str(Path(__file__).parent))
from bench_precision import LAYOUTS, initial_state  # noqa: E402


def step_seconds(trainer, privacy, layout, rank: int, seed: int) -> float:
    trainer.privacy = privacy
    _, metrics = trainer.train(initial_state(trainer, layout, rank), layout, seed=seed)
    return metrics["train_seconds"] / metrics["train_steps"]


def measure(config, repeats: int) -> dict:
    """Median seconds per step, DP and not, per layout (the first repetition not counted)."""
    clients = load_clients(config)
    trainer = build_trainers(config, clients[:1])[clients[0].client_id]
    private = trainer.privacy
    times: dict[tuple[str, str], list[float]] = {}
    for rep in range(repeats + 1):
        for layout_name, layout in LAYOUTS.items():
            order = [("DP", private), ("no DP", None)]
            for mode, privacy in order if rep % 2 == 0 else order[::-1]:
                seconds = step_seconds(trainer, privacy, layout, config.lora.rank, rep)
                if rep > 0:
                    times.setdefault((layout_name, mode), []).append(seconds)
    return {name: {"dp_s_per_step": statistics.median(times[name, "DP"]),
                   "plain_s_per_step": statistics.median(times[name, "no DP"]),
                   "ratio": statistics.median(times[name, "DP"])
                   / statistics.median(times[name, "no DP"])}
            for name in LAYOUTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(overrides={"data": {"tasks": ["news"], "clients_per_task": 2},
                                    "privacy": {"epsilon": 8.0, "seeded_noise": True}})
    figures = measure(config, args.repeats)
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, threads: {args.threads}, "
          f"repetitions: {args.repeats}")
    print(f"{'layout':18s} {'no DP s/step':>13s} {'DP s/step':>10s} {'DP/no DP':>9s}")
    for name, row in figures.items():
        print(f"{name:18s} {row['plain_s_per_step']:13.3f} {row['dp_s_per_step']:10.3f} "
              f"{row['ratio']:9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "layouts": figures,
                       "cpu": torch.backends.cpu.get_cpu_capability()}, f, indent=1)


if __name__ == "__main__":
    main()
