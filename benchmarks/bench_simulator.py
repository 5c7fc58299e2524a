"""Where a simulated federated run spends its time, and how its memory grows with clients.

1. Time: one FedLEASE run (warm-up, clustering, mixture rounds) on the default model and the
   built-in federation. Per round: seconds in local training steps (``train_seconds``), in
   evaluation passes (``eval_seconds``), and everything else (state swaps, aggregation,
   clustering, bookkeeping) = the overhead, with its share of the round. Also the tokens trained
   per second and how much of each padded batch is real tokens (padding is per batch).
2. Memory: peak RSS of the same run with 4, 16 and 64 simulated clients, each in a fresh
   process, and the growth per added client next to the size of one client's adapter state.

    python benchmarks/bench_simulator.py                 # CPU, default model
    python benchmarks/bench_simulator.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch

from fedlease.config import PRECISIONS
from fedlease.configure import load_config
from fedlease.tasks.classification import collate, tokenize
from fedlease.transports.simulator import run_simulation

TASKS = 4  # the built-in federation's tasks


def bench_config(args, clients: int, train: int, test: int, rounds: int):
    return load_config(overrides={
        "model": {"path": args.model} if args.model else {},
        "data": {"clients_per_task": clients // TASKS, "train_per_client": train,
                 "test_per_client": test},
        "train": {"device": args.device, "precision": args.precision,
                  "batch_size": args.batch_size},
        # the paper's signal, as docs/benchmarks.md's numbers were measured (the default,
        # "embedding", adds one forward pass per client before round 1: the profile step)
        "federation": {"rounds": rounds, "warmup_rounds": 1, "allocation": "lora-b", "seed": 0},
    })


def padding_figures(config) -> dict:
    """Real tokens and padded positions of one shuffled epoch of every client, batches drawn
    as training draws them."""
    from transformers import AutoTokenizer

    from fedlease.data.sources import load_source_clients
    from fedlease.model.classifier import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(config.model.path or default_model_path(),
                                              local_files_only=True)
    real = padded = 0
    for client in load_source_clients(config.data, config.federation.seed):
        split = tokenize(tokenizer, client.train, config.model.max_length)
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0)).tolist()
        for start in range(0, len(order), config.train.batch_size):
            feats = [split.features[i] for i in order[start : start + config.train.batch_size]]
            mask = collate(feats, 0, "cpu")["attention_mask"]
            real += int(mask.sum())
            padded += mask.numel()
    return {"real_tokens": real, "padded_tokens": padded}


def client_state_bytes(config, num_experts: int) -> int:
    """One client's FedLEASE state (K experts, its router, a two-label head) in fp32."""
    from fedlease.model.classifier import default_model_path, load_classifier

    model, _ = load_classifier(config.model.path or default_model_path(),
                               config.model.target_modules, config.lora.rank, config.lora.alpha,
                               config.lora.dropout)
    K, r = num_experts, config.lora.rank
    floats = sum(K * r * (d_in + d_out) + (2 * K - 1) * d_in
                 for d_in, d_out in model.adapter_shapes().values())
    return 4 * (floats + (model.hidden_size + 1) * 2)


def time_breakdown(args) -> dict:
    config = bench_config(args, args.clients, args.train_per_client, args.test_per_client,
                          args.rounds)
    result = run_simulation(config, None, progress=False)
    rounds = []
    for entry in result.history:
        clients = entry["clients"].values()
        train = sum(m.get("train_seconds", 0.0) for m in clients)
        evaluate = sum(m["eval_seconds"] for m in clients)
        rounds.append({
            "round": entry["round"], "seconds": entry["seconds"], "train": train,
            "eval": evaluate, "other": entry["seconds"] - train - evaluate,
            "tokens": sum(m.get("train_tokens", 0) for m in clients),
            "steps": sum(m.get("train_steps", 0) for m in clients),
        })
    K = result.report["num_experts"]
    return {"rounds": rounds, "wall": result.wall_seconds,
            "setup": result.wall_seconds - sum(r["seconds"] for r in rounds),
            "num_experts": K, **padding_figures(config)}


def peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmHWM")


def peak_rss_child(args) -> dict:
    config = bench_config(args, args.clients, args.train_per_client, args.test_per_client,
                          rounds=2)
    result = run_simulation(config, None, progress=False)
    # VmHWM, not getrusage's ru_maxrss: a child's ru_maxrss starts at its parent's peak
    # (it survives fork and exec), which would hide every figure below the parent's
    return {"clients": args.clients, "peak_rss_mib": peak_rss_kib() / 1024,
            "num_experts": result.report.get("num_experts"), "wall": result.wall_seconds}


def memory_scaling(args) -> list[dict]:
    out = []
    for clients in args.memory_clients:
        cmd = [sys.executable, __file__, "--peak-rss-of", str(clients),
               "--device", args.device, "--precision", args.precision,
               "--batch-size", str(args.batch_size),
               "--train-per-client", str(args.memory_train_per_client),
               "--test-per-client", str(args.memory_test_per_client)]
        if args.model:
            cmd += ["--model", args.model]
        out.append(child_figures(cmd, f"the {clients}-client run"))
    return out


def child_figures(cmd: list[str], what: str) -> dict:
    """Run ``cmd`` (this or another benchmark measuring one point in a fresh process, so its
    peak memory is its own) and return the JSON object it printed last."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(args, timing: dict | None, memory: list[dict]) -> str:
    lines = [] if timing is None else time_report(args, timing)
    if memory:
        lines += ["", f"{'clients':>7}{'peak RSS MiB':>14}{'K':>4}{'wall s':>9}"]
        for m in memory:
            lines.append(f"{m['clients']:>7}{m['peak_rss_mib']:>14.0f}{m['num_experts']:>4}"
                         f"{m['wall']:>9.1f}")
        first, last = memory[0], memory[-1]
        if last["clients"] == first["clients"]:  # one client count: no growth to show
            return "\n".join(lines)
        growth = (last["peak_rss_mib"] - first["peak_rss_mib"]) / (last["clients"]
                                                                    - first["clients"])
        config = bench_config(args, TASKS, 2, 1, 2)
        lines.append(
            f"growth per added client: {1024 * growth:.0f} KiB (one client's FedLEASE state at "
            f"K={last['num_experts']}: "
            f"{client_state_bytes(config, last['num_experts']) / 1024:.0f} KiB, plus its "
            f"{args.memory_train_per_client + args.memory_test_per_client} tokenized examples "
            f"and its trainer)")
    return "\n".join(lines)


def time_report(args, timing: dict) -> list[str]:
    lines = [f"device {args.device}, {args.clients} clients x {args.train_per_client} train / "
             f"{args.test_per_client} test examples, batch {args.batch_size}, "
             f"{args.rounds} rounds (1 warm-up), K = {timing['num_experts']}", "",
             f"{'round':>5}{'seconds':>9}{'train':>8}{'eval':>8}{'other':>8}{'other %':>9}"
             f"{'steps':>7}{'tokens/s':>10}"]
    for r in timing["rounds"]:
        lines.append(f"{r['round']:>5}{r['seconds']:>9.2f}{r['train']:>8.2f}{r['eval']:>8.2f}"
                     f"{r['other']:>8.2f}{100 * r['other'] / r['seconds']:>8.1f}%"
                     f"{r['steps']:>7}{r['tokens'] / r['train']:>10.0f}")
    total = {k: sum(r[k] for r in timing["rounds"]) for k in ("seconds", "train", "eval",
                                                               "other", "tokens", "steps")}
    shares = [100 * r["other"] / r["seconds"] for r in timing["rounds"]]
    lines += [
        f"{'all':>5}{total['seconds']:>9.2f}{total['train']:>8.2f}{total['eval']:>8.2f}"
        f"{total['other']:>8.2f}{100 * total['other'] / total['seconds']:>8.1f}%"
        f"{total['steps']:>7}{total['tokens'] / total['train']:>10.0f}",
        f"overhead share per round: median {statistics.median(shares):.1f}%, "
        f"max {max(shares):.1f}%; setup (model load, tokenizing) {timing['setup']:.1f} s",
        f"real tokens in padded batches: {timing['real_tokens']} of {timing['padded_tokens']} "
        f"({100 * timing['real_tokens'] / timing['padded_tokens']:.1f}%; padding is per batch)",
    ]
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--model", default="", help="local model folder (default: the "
                                                    "packaged all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8, help="clients of the timed run")
    parser.add_argument("--train-per-client", type=int, default=64)
    parser.add_argument("--test-per-client", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-clients", type=int, nargs="*", default=[4, 16, 64],
                        help="client counts of the peak-RSS runs (none: skip them)")
    parser.add_argument("--memory-train-per-client", type=int, default=16)
    parser.add_argument("--memory-test-per-client", type=int, default=8)
    parser.add_argument("--no-timing", action="store_true", help="only the memory runs")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--peak-rss-of", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for n in [args.clients, *args.memory_clients]:
        if n % TASKS:
            parser.error(f"client counts must be multiples of {TASKS} (the built-in tasks)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.peak_rss_of:
        args.clients = args.peak_rss_of
        args.train_per_client = args.memory_train_per_client
        args.test_per_client = args.memory_test_per_client
        print(json.dumps(peak_rss_child(args)))
        return {}
    timing = None if args.no_timing else time_breakdown(args)
    memory = memory_scaling(args) if args.memory_clients else []
    print(report(args, timing, memory))
    figures = {"args": {k: v for k, v in vars(args).items() if k != "json"},
               "timing": timing, "memory": memory}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
