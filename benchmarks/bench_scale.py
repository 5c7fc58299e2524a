"""How a sampled run grows with the federation: 16, 100 and 1,000 clients, 16 per round.

Each point is one FedLEASE run (embedding allocation, one warm-up round) on the built-in tasks
split into N label-skewed clients with a few examples each, in a fresh process. Reported per N:

- seconds of a round with the experts (round 2: 16 clients train and are evaluated) and of the
  last round (which evaluates every client);
- seconds of the profile step + allocation before round 1 is not separated from the run; the
  clustering itself (distance matrix of N clients -> hierarchical clustering for k = 2..M_max,
  silhouettes) is timed apart on the run's own distance matrix;
- peak RSS (VmHWM) and its growth per added client, next to one client's adapter state (the
  states of clients not training live on disk, ``federation.client_states``);
- bytes downloaded and uploaded in round 2 (``traffic``) and the client states' bytes on disk.

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py                  # N = 16, 100, 1000
    python benchmarks/bench_scale.py --clients 16 100 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_simulator import child_figures, peak_rss_kib  # noqa: E402

TASKS = 4  # the built-in federation's tasks


def bench_config(args, clients: int):
    from fedlease.configure import load_config

    return load_config(overrides={
        "model": {"max_length": args.max_length, **({"path": args.model} if args.model else {})},
        "data": {"clients_per_task": clients // TASKS, "train_per_client": args.train_per_client,
                 "test_per_client": args.test_per_client, "label_skew": 0.5},
        "train": {"batch_size": args.train_per_client, "device": args.device},
        "federation": {"rounds": 3, "warmup_rounds": 1, "allocation": "embedding",
                       "clients_per_round": args.per_round, "seed": 0},
    })


def adapter_state_bytes(config, num_experts: int, num_labels: int) -> int:
    """One FedLEASE client's state: K experts and a router of 2K-1 slots on every adapted
    layer, and its head, float32 (read from the model's config: no weights loaded)."""
    from transformers import AutoConfig

    from fedlease.tasks.loading import base_model_path

    model = AutoConfig.from_pretrained(base_model_path(config), local_files_only=True)
    hidden, layers = model.hidden_size, model.num_hidden_layers
    per_layer = num_experts * config.lora.rank * 2 * hidden + (2 * num_experts - 1) * hidden
    adapted = layers * len(config.model.target_modules)
    return 4 * (adapted * per_layer + hidden * num_labels + num_labels)


def one_point(args) -> dict:
    """The run of ``args.point`` clients, in this (fresh) process."""
    import numpy as np

    from fedlease.algorithms.clustering import cluster_clients
    from fedlease.transports.simulator import run_simulation

    config = bench_config(args, args.point)
    start = time.perf_counter()
    result = run_simulation(config, None, progress=False)
    wall = time.perf_counter() - start
    distance = np.array(result.report["distance"])
    start = time.perf_counter()
    cluster_clients(distance, config.federation.max_experts)
    clustering = time.perf_counter() - start
    with_experts = result.history[1]
    return {"clients": args.point, "wall": wall, "peak_rss_mib": peak_rss_kib() / 1024,
            "round_seconds": with_experts["seconds"],
            "last_round_seconds": result.history[-1]["seconds"],
            "clustering_seconds": clustering, "num_experts": result.report["num_experts"],
            "download_bytes": with_experts["traffic"]["download"],
            "upload_bytes": with_experts["traffic"]["upload"],
            "trained": len(with_experts["traffic"]["clients"]),
            "state_bytes": adapter_state_bytes(config, result.report["num_experts"], 2)}


def run_points(args) -> list[dict]:
    out = []
    for clients in args.clients:
        cmd = [sys.executable, __file__, "--point", str(clients), "--device", args.device,
               "--per-round", str(args.per_round), "--max-length", str(args.max_length),
               "--train-per-client", str(args.train_per_client),
               "--test-per-client", str(args.test_per_client)]
        if args.model:
            cmd += ["--model", args.model]
        out.append(child_figures(cmd, f"the {clients}-client run"))
        print(f"  {clients} clients: {out[-1]['wall']:.0f} s", file=sys.stderr)
    return out


def report(points: list[dict]) -> str:
    base = points[0]
    lines = [f"{'clients':>7}{'round s':>9}{'x N=' + str(base['clients']):>9}"
             f"{'last round s':>14}{'clustering s':>14}{'peak RSS MiB':>14}"
             f"{'down B/round':>14}{'up B/round':>12}{'K':>3}"]
    for p in points:
        lines.append(f"{p['clients']:>7}{p['round_seconds']:>9.2f}"
                     f"{p['round_seconds'] / base['round_seconds']:>9.2f}"
                     f"{p['last_round_seconds']:>14.2f}{p['clustering_seconds']:>14.3f}"
                     f"{p['peak_rss_mib']:>14.0f}{p['download_bytes']:>14,}"
                     f"{p['upload_bytes']:>12,}{p['num_experts']:>3}")
    if len(points) > 1:
        last = points[-1]
        growth = (last["peak_rss_mib"] - base["peak_rss_mib"]) * 2**20 / (
            last["clients"] - base["clients"])
        lines.append(f"\nmemory growth per added client: {growth / 1024:.1f} KiB "
                     f"(one client's adapter state: {base['state_bytes'] / 1024:.1f} KiB)")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 100, 1000])
    parser.add_argument("--per-round", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="", help="local model folder (default: the "
                                                    "packaged all-MiniLM-L6-v2)")
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--train-per-client", type=int, default=3)
    parser.add_argument("--test-per-client", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--point", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for n in args.clients:
        if n % TASKS or n < args.per_round:
            parser.error(f"client counts must be multiples of {TASKS} (the built-in tasks) "
                         f"and at least --per-round = {args.per_round}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.point:
        print(json.dumps(one_point(args)))
        return []
    points = run_points(args)
    print(report(points))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "points": points}, f, indent=2)
    return points


if __name__ == "__main__":
    main()
