"""How well each allocation signal finds the clients' tasks: ARI by signal x warm-up rounds.

Warm-up only, so it is cheap: per seed, every client trains its warm-up LoRA for up to
max(--warmups) rounds exactly as FedLEASE's warm-up does (same seeds, same common init: the LoRA
after round w is the one a run with ``warmup_rounds = w`` clusters), and the server's
clustering is applied after each listed round to the ``lora-b`` and ``hybrid`` signals; the
``embedding`` signal needs no training (warm-up 0); ``--epsilon`` adds it as released under
``[privacy]`` at each epsilon (``fedlease.privacy``: unit-length examples, Gaussian noise for
``privacy.embedding_share`` of the budget). Writes a JSON file and prints a table.

    python scripts/allocation_study.py --seeds 0,1,2 --warmups 1,2,3,5 --out study.json
    python scripts/allocation_study.py --warmups '' --epsilon 8,3,1 --out dp_embedding.json
    python scripts/allocation_study.py --config configs/compare_glue.toml ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from statistics import mean, stdev

from fedlease.algorithms import ALGORITHMS, ClientInfo
from fedlease.algorithms.base import client_embedding
from fedlease.algorithms.clustering import (
    SIGNALS,
    b_distance_matrix,
    cluster_clients,
    embedding_distance_matrix,
    mean_offdiagonal,
)
from fedlease.algorithms.messages import EMBEDDING_PART, Instruction, UploadSpec
from fedlease.configure import load_config, with_overrides
from fedlease.privacy.client import client_privacy
from fedlease.reporting.summary import clustering_ari
from fedlease.tasks.loading import build_trainers, load_clients


def hybrid_distance(b_distance, embedding_distance):
    """The hybrid signal's distance, each matrix scaled to a mean off-diagonal of 1 (as
    FedLEASE scales them at its allocation round)."""
    return SIGNALS["hybrid"].distance(b_distance, embedding_distance,
                                      [mean_offdiagonal(b_distance),
                                       mean_offdiagonal(embedding_distance)])


class Computed:
    """A client's mean representation, computed once for every noise level."""

    def __init__(self, vector):
        self.vector = vector

    def mean_representation(self):
        return self.vector


def study_seed(config, warmups: list[int], truths: dict[str, dict[str, str]],
               noises: list[float], epsilons: tuple[float, ...] = ()) -> dict:
    """ARI per signal and warm-up for one seed; ``truths``: name -> client -> true group."""
    clients = load_clients(config)
    trainers = build_trainers(config, clients)
    model = next(iter(trainers.values())).model
    ids = [c.client_id for c in clients]
    infos = [ClientInfo(c.client_id, len(c.train)) for c in clients]
    server = ALGORITHMS["fedlease"](config, infos, model.adapter_shapes(),
                                    model.representation_dim)
    max_experts = config.federation.max_experts
    truths = {"task": {c.client_id: c.task for c in clients}, **truths}

    def scores(distance):
        clustering = cluster_clients(distance, max_experts)
        assignment = dict(zip(ids, clustering.labels, strict=True))
        return {"num_experts": clustering.num_clusters,
                **{f"ari_{name}": clustering_ari(truth, assignment)
                   for name, truth in truths.items()}}

    start = time.perf_counter()
    means = {cid: Computed(trainers[cid].mean_representation()) for cid in ids}
    embeddings = [client_embedding(means[cid], Instruction({})) for cid in ids]
    e_distance = embedding_distance_matrix(embeddings)
    out = {"embedding": {0: scores(e_distance)}, "lora-b": {}, "hybrid": {},
           "embedding_seconds": time.perf_counter() - start}
    for noise in noises:  # the same vectors, blurred as federation.embedding_noise does
        noisy = [client_embedding(means[cid], Instruction(
            {}, upload=UploadSpec(parts=(EMBEDDING_PART,), embedding_noise=noise),
            seed=server.client_seed(0, cid))) for cid in ids]
        out[f"embedding, noise {noise:g}"] = {0: scores(embedding_distance_matrix(noisy))}
    for epsilon in epsilons:  # the vector each client releases in a DP run at this epsilon
        private = with_overrides(config, {"privacy": {"epsilon": epsilon, "seeded_noise": True}})
        released = []
        for cid in ids:
            trainers[cid].privacy = client_privacy(private, trainers[cid].num_train, True)
            released.append(client_embedding(trainers[cid], Instruction(
                {}, seed=server.client_seed(0, cid))))
            trainers[cid].privacy = None
        out[f"embedding, DP epsilon {epsilon:g}"] = {
            0: scores(embedding_distance_matrix(released))}
    local = {cid: {} for cid in ids}
    for rnd in range(1, max(warmups, default=0) + 1):
        fit = server.configure_fit(rnd)
        for cid in ids:
            _, local[cid] = server.client.fit(fit[cid], local[cid], trainers[cid])
        if rnd in warmups:
            b_distance = b_distance_matrix([
                {k: v for k, v in local[cid].items() if k.endswith(".lora_B")} for cid in ids])
            out["lora-b"][rnd] = scores(b_distance)
            out["hybrid"][rnd] = scores(hybrid_distance(b_distance, e_distance))
    out["seconds"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a fedlease TOML config (default: the defaults)")
    parser.add_argument("--data-path", help="override data.path")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--warmups", default="1,2,3,5", help="'' for the embedding alone")
    parser.add_argument("--noise", default="", help="embedding noise stds to try, e.g. 0.05,0.1")
    parser.add_argument("--epsilon", default="",
                        help="DP embedding at these privacy.epsilon values, e.g. 8,3,1")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    config = load_config(args.config,
                         {"data": {"path": args.data_path}} if args.data_path else None)
    warmups = [int(w) for w in args.warmups.split(",") if w]
    noises = [float(x) for x in args.noise.split(",") if x]
    epsilons = tuple(float(x) for x in args.epsilon.split(",") if x)
    truths = {}  # other true groupings than the task, e.g. by scripts/build_domain_federation.py
    domains = Path(config.data.path) / "domains.json"
    if config.data.source == "jsonl" and domains.exists():
        truths["domain"] = json.loads(domains.read_text())
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        seeded = with_overrides(config, {"federation": {
            "seed": seed, "warmup_rounds": max(warmups, default=1),
            "rounds": max(warmups, default=1) + 1}})
        results[seed] = study_seed(seeded, warmups, truths, noises, epsilons)
        print(f"seed {seed}: {results[seed]['seconds']:.0f} s", flush=True)
    rows = ([("embedding", 0)] + [(f"embedding, noise {x:g}", 0) for x in noises]
            + [(f"embedding, DP epsilon {e:g}", 0) for e in epsilons]
            + [(s, w) for s in ("lora-b", "hybrid") for w in warmups])
    keys = [k for k in results[next(iter(results))]["embedding"][0] if k.startswith("ari_")]
    lines = ["| signal | warm-up rounds | " + " | ".join(k.replace("_", " vs ") for k in keys)
             + " | experts |", "|---|---|" + "---|" * (len(keys) + 1)]
    for signal, w in rows:
        cells = [results[s][signal][w] for s in results]
        stats = []
        for key in keys + ["num_experts"]:
            values = [c[key] for c in cells]
            spread = stdev(values) if len(values) > 1 else 0.0
            stats.append(f"{mean(values):.2f} ± {spread:.2f}")
        lines.append(f"| {signal} | {w} | " + " | ".join(stats) + " |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": dataclasses.asdict(config), "results": results,
                                    "table": table}, indent=1))


if __name__ == "__main__":
    main()
