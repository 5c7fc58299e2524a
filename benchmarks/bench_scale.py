"""How a sampled run grows with the federation: 16 ... 10,000 clients, 16 per round, each run
with its output folder (as ``fedlease run`` writes it); and the allocation alone at 100,000.

Each point is one FedLEASE run (embedding allocation, one warm-up round) on the built-in tasks
split into N label-skewed clients with a few examples each, in a fresh process, writing its
output folder (metrics, reports, plots, checkpoint every round, final adapters) to a temporary
folder. Reported per N:

- seconds of a round with the experts (the median of rounds 2 .. ``--rounds`` - 1: 16 clients
  train and are evaluated; its ``seconds`` cover the reports and the checkpoint,
  ``train_seconds`` the rest) and of the last round (which evaluates every client and writes
  the final reports);
- seconds of the profile step (every client's embedding) and of the allocation (round 1's
  ``aggregate_seconds``: the clustering, exact or on the sample past
  ``federation.exact_allocation_clients``, and the experts' start);
- peak RSS (VmHWM; VmRSS after each round, and its heap and file parts after the last) and its
  growth per added client, next to one client's adapter state (the
  states of clients not training live on disk, ``federation.client_states``);
- bytes written to files in round 2 (``wchar`` of ``/proc/self/io``: the output folder and the
  client-state store) and the output folder's size at the end;
- bytes downloaded and uploaded in round 2 (``traffic``).

``--allocation N ...``: the server side alone, in a fresh process per N: N synthetic uploaded
embeddings (4 planted directions plus noise, 384 floats) allocated as ``aggregate_profile``
does (W = 0); seconds, peak RSS, K, and the share of clients grouped with their direction.

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --source glue --clients 1000 10000 \
        --allocation 100000 --json scale.json
    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --clients 16 --allocation 100000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_simulator import child_figures, peak_rss_kib  # noqa: E402

TASKS = 4  # the built-in federation's tasks


GLUE = "/work/shared/data/glue"  # the development machine's GLUE samples (--source glue)


def glue_tables(glue: str, clients: int) -> list[dict]:
    """3 of every 5 clients from SST-2 (20,000 rows), the others from QQP (15,000 rows): 3 rows
    each, iid, 1 held out for test (``test_fraction`` 0.3), so 10,000 clients fit."""
    sst2 = clients * 3 // 5
    common = {"partitioner": "iid", "test_fraction": 0.3}
    return [{**common, "path": f"{glue}/SST-2/train.tsv", "name": "sst2", "text": "sentence",
             "label": "label", "num_partitions": sst2, "max_examples": 3 * sst2},
            {**common, "path": f"{glue}/QQP/*.tsv", "name": "qqp", "text": "question1",
             "text_pair": "question2", "label": "is_duplicate",
             "num_partitions": clients - sst2, "max_examples": 3 * (clients - sst2)}]


def bench_config(args, clients: int):
    from fedlease.configure import load_config

    if args.source == "glue":  # as many clients as asked: data.source = "datasets"
        data = {"source": "datasets", "datasets": glue_tables(args.glue, clients)}
    else:  # the built-in tasks hold 1,200 clients of 3 + 1 examples at most
        data = {"clients_per_task": clients // TASKS, "train_per_client": args.train_per_client,
                "test_per_client": args.test_per_client, "label_skew": 0.5}
    return load_config(overrides={
        "model": {"max_length": args.max_length, **({"path": args.model} if args.model else {})},
        "data": data,
        "train": {"batch_size": args.train_per_client, "device": args.device},
        "federation": {"rounds": args.rounds, "warmup_rounds": 1, "allocation": "embedding",
                       "clients_per_round": args.per_round, "seed": 0,
                       "exact_allocation_clients": args.exact_allocation_clients},
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


def written_bytes() -> int:
    """Bytes this process passed to write calls so far (``wchar``)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def resident_mib() -> dict[str, float]:
    """VmRSS and its parts: anonymous memory (the heap) and file pages mapped in (the model's
    weights, shared libraries), MiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "RssAnon", "RssFile")}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def one_point(args) -> dict:
    """The run of ``args.point`` clients with its output folder, in this (fresh) process."""
    from fedlease.transports.simulator import InProcessTransport, run_simulation

    config = bench_config(args, args.point)
    written, rss = {}, {}  # round -> bytes written by the end of it, VmRSS MiB then
    done = InProcessTransport.round_done

    def recording(self, entry, metric):
        written[entry["round"]] = written_bytes()
        rss[entry["round"]] = resident_mib()
        done(self, entry, metric)

    InProcessTransport.round_done = recording
    out = Path(tempfile.mkdtemp(prefix=f"bench-scale-{args.point}-", dir=args.out_root))
    try:
        start = time.perf_counter()
        result = run_simulation(config, out / "run", progress=False)
        wall = time.perf_counter() - start
        disk = folder_bytes(out / "run")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    with_experts = result.history[1]
    middle = result.history[1:-1]  # rounds with the experts that evaluate only their clients
    return {"clients": args.point, "wall": wall, "peak_rss_mib": peak_rss_kib() / 1024,
            "round_seconds": statistics.median(e["seconds"] for e in middle),
            "round_train_seconds": statistics.median(e["train_seconds"] for e in middle),
            "round_seconds_each": [e["seconds"] for e in middle],
            "last_round_seconds": result.history[-1]["seconds"],
            "profile_seconds": result.profile_seconds,
            "allocation_seconds": result.history[0]["aggregate_seconds"],
            "written_bytes_round": written[2] - written[1], "folder_bytes": disk,
            "rss_mib_after_round": {rnd: parts["VmRSS"] for rnd, parts in rss.items()},
            "rss_parts_after_last_round": rss[max(rss)],
            "num_experts": result.report["num_experts"],
            "clustered": len(result.report["clients"]),
            "download_bytes": with_experts["traffic"]["download"],
            "upload_bytes": with_experts["traffic"]["upload"],
            "trained": len(with_experts["traffic"]["clients"]),
            "state_bytes": adapter_state_bytes(config, result.report["num_experts"], 2)}


def allocation_point(args) -> dict:
    """The server's allocation of ``args.allocation_point`` synthetic embeddings."""
    import torch

    from fedlease.algorithms import ALGORITHMS, ClientInfo, Reply
    from fedlease.algorithms.messages import EMBEDDING_KEY
    from fedlease.configure import load_config

    n, dim = args.allocation_point, 384
    config = load_config(overrides={"federation": {
        "rounds": 2, "warmup_rounds": 0, "allocation": "embedding", "max_experts": 4,
        "exact_allocation_clients": args.exact_allocation_clients}})
    clients = [ClientInfo(f"client-{i:06d}", 3) for i in range(n)]
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(TASKS, dim, generator=gen)
    planted = [i % TASKS for i in range(n)]
    vectors = directions[planted] + 0.5 * torch.randn(n, dim, generator=gen)
    replies = {c.client_id: Reply({EMBEDDING_KEY: vectors[i]}, 3)
               for i, c in enumerate(clients)}
    shapes = {f"layer.{i}.{m}": (dim, dim) for i in range(6) for m in ("query", "value")}
    server = ALGORITHMS["fedlease"](config, clients, shapes, dim)
    start = time.perf_counter()
    server.aggregate_profile(replies)
    seconds = time.perf_counter() - start
    from fedlease.reporting.summary import clustering_ari

    ari = clustering_ari({c.client_id: str(planted[i]) for i, c in enumerate(clients)},
                         server.cluster_of)
    return {"clients": n, "seconds": seconds, "peak_rss_mib": peak_rss_kib() / 1024,
            "num_experts": server.num_experts, "clustered": len(server.clustered), "ari": ari}


def run_points(args) -> list[dict]:
    out = []
    for clients in args.clients:
        cmd = [sys.executable, __file__, "--point", str(clients), "--device", args.device,
               "--per-round", str(args.per_round), "--max-length", str(args.max_length),
               "--train-per-client", str(args.train_per_client),
               "--test-per-client", str(args.test_per_client),
               "--exact-allocation-clients", str(args.exact_allocation_clients),
               "--source", args.source, "--glue", args.glue, "--rounds", str(args.rounds)]
        if args.model:
            cmd += ["--model", args.model]
        if args.out_root:
            cmd += ["--out-root", args.out_root]
        out.append(child_figures(cmd, f"the {clients}-client run"))
        print(f"  {clients} clients: {out[-1]['wall']:.0f} s", file=sys.stderr)
    return out


def run_allocations(args) -> list[dict]:
    out = []
    for clients in args.allocation:
        cmd = [sys.executable, __file__, "--allocation-point", str(clients),
               "--exact-allocation-clients", str(args.exact_allocation_clients)]
        out.append(child_figures(cmd, f"the allocation of {clients} clients"))
        print(f"  allocation of {clients}: {out[-1]['seconds']:.1f} s", file=sys.stderr)
    return out


def report(points: list[dict], allocations: list[dict]) -> str:
    lines = []
    if points:
        base = points[0]
        lines.append(f"{'clients':>7}{'round s':>9}{'x N=' + str(base['clients']):>9}"
                     f"{'train s':>9}{'last round s':>14}{'profile s':>11}{'alloc s':>9}"
                     f"{'peak RSS MiB':>14}{'x N=' + str(base['clients']):>9}"
                     f"{'written B/round':>17}{'folder MiB':>12}{'K':>3}")
        for p in points:
            lines.append(f"{p['clients']:>7}{p['round_seconds']:>9.2f}"
                         f"{p['round_seconds'] / base['round_seconds']:>9.2f}"
                         f"{p['round_train_seconds']:>9.2f}{p['last_round_seconds']:>14.2f}"
                         f"{p['profile_seconds']:>11.1f}{p['allocation_seconds']:>9.3f}"
                         f"{p['peak_rss_mib']:>14.0f}"
                         f"{p['peak_rss_mib'] / base['peak_rss_mib']:>9.2f}"
                         f"{p['written_bytes_round']:>17,}{p['folder_bytes'] / 2**20:>12.1f}"
                         f"{p['num_experts']:>3}")
        if len(points) > 1:
            last = points[-1]
            growth = (last["peak_rss_mib"] - base["peak_rss_mib"]) * 2**20 / (
                last["clients"] - base["clients"])
            lines.append(f"\nmemory growth per added client: {growth / 1024:.1f} KiB "
                         f"(one client's adapter state: {base['state_bytes'] / 1024:.1f} KiB)")
    if allocations:
        lines.append(f"\n{'allocated':>9}{'clustered':>10}{'seconds':>9}{'peak RSS MiB':>14}"
                     f"{'K':>3}{'ARI':>6}")
        for a in allocations:
            lines.append(f"{a['clients']:>9}{a['clustered']:>10}{a['seconds']:>9.2f}"
                         f"{a['peak_rss_mib']:>14.0f}{a['num_experts']:>3}{a['ari']:>6.2f}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 100, 1000])
    parser.add_argument("--per-round", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of each run (1 warm-up; the round time is the median of "
                             "rounds 2 .. rounds - 1, the last evaluates every client)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="", help="local model folder (default: the "
                                                    "packaged all-MiniLM-L6-v2)")
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--train-per-client", type=int, default=3)
    parser.add_argument("--test-per-client", type=int, default=1)
    parser.add_argument("--source", choices=["builtin", "glue"], default="builtin",
                        help="the clients' data: the built-in tasks split N ways (at most "
                             "1,200 clients), or GLUE's SST-2 and QQP rows, 3 per client")
    parser.add_argument("--glue", default=GLUE, help="the glue_data folder (--source glue)")
    parser.add_argument("--exact-allocation-clients", type=int, default=1000,
                        help="federation.exact_allocation_clients")
    parser.add_argument("--allocation", type=int, nargs="*", default=[],
                        help="also allocate this many synthetic embeddings (server side only)")
    parser.add_argument("--out-root", default="",
                        help="where the runs' temporary output folders go (default: $TMPDIR)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--point", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--allocation-point", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out_root = args.out_root or None
    for n in args.clients if args.source == "builtin" else ():
        if n % TASKS or n < args.per_round:
            parser.error(f"client counts must be multiples of {TASKS} (the built-in tasks) "
                         f"and at least --per-round = {args.per_round}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.point:
        print(json.dumps(one_point(args)))
        return []
    if args.allocation_point:
        print(json.dumps(allocation_point(args)))
        return []
    points = run_points(args)
    allocations = run_allocations(args)
    print(report(points, allocations))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "points": points, "allocations": allocations}, f,
                      indent=2)
    return points


if __name__ == "__main__":
    main()
