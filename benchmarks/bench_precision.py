"""The default run's local update in fp32 and under bf16 autocast: tokens trained per second.

One client of the built-in federation on the default model, trained as ``fedlease run`` trains
it (its ``LocalTrainer.train``: 128 examples, batch 16, one epoch), once with the FedLEASE
mixture layout of a default run after warm-up (4 experts, 7 router slots) and once with the
plain one-LoRA warm-up layout. The precisions alternate, repetition by repetition, so a shared
or throttled machine slows both alike; the table gives the median tokens per second and the
bf16 / fp32 ratio of each layout.

    python benchmarks/bench_precision.py                 # CPU, one thread
    python benchmarks/bench_precision.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from fedlease.configure import load_config
from fedlease.model.adapted import ADAPTER_PREFIX
from fedlease.model.lora import AdapterLayout
from fedlease.tasks.loading import build_trainers, load_clients

LAYOUTS = {"warm-up LoRA": AdapterLayout(), "FedLEASE mixture": AdapterLayout.fedlease(4, 0)}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def initial_state(trainer, layout: AdapterLayout, rank: int, seed: int = 0) -> dict:
    """Adapters of ``layout`` on every adapted layer (A and B random, so every expert and the
    router get gradients as in a mixture round) and a new head."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (d_in, d_out) in trainer.model.adapter_shapes().items():
        shapes = {"lora_A": (layout.num_experts, rank, d_in),
                  "lora_B": (layout.num_experts, d_out, rank)}
        if layout.router_slots is not None:
            shapes["router"] = (len(layout.router_slots), d_in)
        for part, shape in shapes.items():
            state[f"{ADAPTER_PREFIX}{name}.{part}"] = torch.randn(shape, generator=gen) * 0.02
    return {**state, **trainer.new_head(seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(overrides={"data": {"tasks": ["news"], "clients_per_task": 2}})
    clients = load_clients(config)
    trainer = build_trainers(config, clients[:1])[clients[0].client_id]
    rates: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.repeats + 1):  # the first repetition warms up and is not counted
        for layout_name, layout in LAYOUTS.items():
            order = list(PRECISIONS.items())
            for precision, dtype in order if rep % 2 == 0 else order[::-1]:
                trainer.autocast_dtype = dtype
                state = initial_state(trainer, layout, config.lora.rank)
                _, metrics = trainer.train(state, layout, seed=rep)
                if rep > 0:
                    rate = metrics["train_tokens"] / metrics["train_seconds"]
                    rates.setdefault((layout_name, precision), []).append(rate)
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, threads: {args.threads}, "
          f"repetitions: {args.repeats}")
    print(f"{'layout':18s} {'fp32 tok/s':>11s} {'bf16 tok/s':>11s} {'bf16/fp32':>10s}")
    figures = {}
    for layout_name in LAYOUTS:
        fp32, bf16 = (statistics.median(rates[layout_name, p]) for p in PRECISIONS)
        figures[layout_name] = {"fp32_tokens_per_s": fp32, "bf16_tokens_per_s": bf16,
                                "ratio": bf16 / fp32}
        print(f"{layout_name:18s} {fp32:11.0f} {bf16:11.0f} {bf16 / fp32:10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "layouts": figures,
                       "cpu": torch.backends.cpu.get_cpu_capability()}, f, indent=1)


if __name__ == "__main__":
    main()
