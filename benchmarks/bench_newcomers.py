"""Newcomers: what a finished federation gives a client that arrives after it (issue 31).

Per seed, the four built-in tasks are split into 3 clients each (24 training examples apiece):
2 per task form the federation (their test splits cut to 8 examples), the 3rd of each task is a
newcomer held out of it, with its 24 training examples to adapt on and 200 test examples. The
federation trains 4 rounds (FedLEASE: 1 warm-up round, embedding allocation), 1 local epoch,
batch 8, lr 1e-2, 32 tokens, on the default model (sized for a shared 2-core CPU).
FedLEASE, IFCA-LoRA and FedIT train on the federation as ``fedlease run`` does (its clients
written as a JSONL folder, ``data.source = "jsonl"``); then every newcomer joins each finished
run by the algorithm's newcomer protocol (what ``fedlease join`` runs: ``newcomers.onboard``)
with a budget of 0, 10 and 50 local steps, and a local LoRA from scratch (the common init, no
federation) takes the same steps. The table: newcomer test accuracy, mean +- std over the seeds
of the mean over the 4 newcomers.

    OMP_NUM_THREADS=1 python benchmarks/bench_newcomers.py --seeds 0,1,2 --out runs/newcomers

Seeds may run as separate processes (``--seeds 1``), each writing ``OUT/seed<S>/newcomers.json``;
``--table`` then prints the table of every seed in ``OUT`` (written to ``OUT/newcomers.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from fedlease.algorithms import ALGORITHMS, ClientInfo
from fedlease.configure import load_config
from fedlease.newcomers import onboard, restore_server
from fedlease.tasks.loading import client_trainer, load_base_model, load_clients
from fedlease.transports.simulator import run_simulation

ALGORITHM_NAMES = ("fedlease", "ifca-lora", "fedit")
STEPS = (0, 10, 50)
CLIENTS_PER_TASK = 3  # the last of each task is the newcomer
FEDERATION_TEST = 8  # test examples a federation client keeps (its per-round evaluation)
SETTINGS = {
    "model": {"max_length": 32},
    "data": {"source": "builtin", "clients_per_task": CLIENTS_PER_TASK, "train_per_client": 24,
             "test_per_client": 200},
    "train": {"lr": 1e-2, "batch_size": 8, "local_epochs": 1},
    "federation": {"rounds": 4, "warmup_rounds": 1, "max_experts": 4,
                   "allocation": "embedding"},
}


def write_clients(folder: Path, clients, test: int | None = None) -> Path:
    """``clients`` as a JSONL folder (``load_jsonl_folder``), their tasks and label names in
    its manifest; ``test``: each client's test split cut to that many examples."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"clients": {}, "labels": {}}
    for client in clients:
        manifest["clients"][client.client_id] = client.task
        manifest["labels"][client.task] = client.labels
        rows = [(ex, "train") for ex in client.train] + \
            [(ex, "test") for ex in client.test[:test]]
        lines = [{"text": ex.text, "label": client.labels[ex.label], "split": split,
                  **({"text_pair": ex.text_pair} if ex.text_pair is not None else {})}
                 for ex, split in rows]
        (folder / f"{client.client_id}.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def newcomer_accuracy(algorithm, trainers: dict, steps: int) -> dict[str, float]:
    """Per newcomer: its test accuracy after the protocol with ``steps`` local steps."""
    out = {}
    for cid, trainer in trainers.items():
        state, layout = onboard(algorithm, trainer, steps)
        out[cid] = trainer.evaluate(state, layout)["accuracy"]
    return out


def run_seed(seed: int, out: Path, algorithms: list[str], steps: tuple[int, ...]) -> dict:
    split = load_config(overrides={**SETTINGS, "federation": {**SETTINGS["federation"],
                                                               "seed": seed}})
    clients = load_clients(split)
    newcomers = clients[CLIENTS_PER_TASK - 1::CLIENTS_PER_TASK]
    federation = [c for c in clients if c not in newcomers]
    data = write_clients(out / f"seed{seed}" / "federation", federation, FEDERATION_TEST)
    model, tokenizer = load_base_model(split, training=False)
    trainers = {c.client_id: client_trainer(split, model, tokenizer, c) for c in newcomers}
    record = out / f"seed{seed}" / "newcomers.json"
    # what an earlier, stopped invocation finished is kept (the budgets must be the same)
    results: dict = json.loads(record.read_text()) if record.exists() else {}
    local = ALGORITHMS["local"](split, [ClientInfo(c.client_id, len(c.train)) for c in federation],
                                model.adapter_shapes(), model.representation_dim)
    for name in ["local", *algorithms]:
        if set(results.get(name, {})) == {str(s) for s in steps}:
            continue
        start = time.perf_counter()
        if name == "local":  # no federation: the common init, trained from scratch
            algorithm = local
        else:
            algorithm = trained_server(split, data, name, out / f"seed{seed}" / name, model)
        results[name] = {str(s): newcomer_accuracy(algorithm, trainers, s) for s in steps}
        record.write_text(json.dumps(results, indent=1))  # what finished, if stopped
        print(f"seed {seed} {name}: {time.perf_counter() - start:.0f} s, newcomers "
              + ", ".join(f"{s} steps {statistics.mean(v.values()):.3f}"
                          for s, v in results[name].items()), flush=True)
    return results


def trained_server(split, data: Path, name: str, run_dir: Path, model):
    """The server of algorithm ``name`` after ``fedlease run`` on the federation ``data``."""
    config = dataclasses.replace(
        split, data=dataclasses.replace(split.data, source="jsonl", path=str(data)),
        federation=dataclasses.replace(split.federation, algorithm=name))
    if not (run_dir / "run.json").exists():
        run_simulation(config, run_dir, progress=False, overwrite=True)
    return restore_server(run_dir, config, model)


def table(by_seed: dict[int, dict], steps: tuple[int, ...]) -> str:
    """Markdown: per algorithm and budget, mean +- std over the seeds that have it of the
    newcomers' mean accuracy (%)."""
    names = list(dict.fromkeys(name for results in by_seed.values() for name in results))
    lines = ["| algorithm | seeds | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for name in names:
        runs = [results[name] for results in by_seed.values() if name in results]
        cells = []
        for s in steps:
            means = [100 * statistics.mean(run[str(s)].values()) for run in runs if str(s) in run]
            spread = statistics.stdev(means) if len(means) > 1 else 0.0
            cells.append(f"{statistics.mean(means):.1f} ± {spread:.1f}" if means else "–")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds to run")
    parser.add_argument("--out", default="runs/newcomers")
    parser.add_argument("--algorithms", default=",".join(ALGORITHM_NAMES))
    parser.add_argument("--steps", default=",".join(map(str, STEPS)))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true",
                        help="run nothing: the table of the seeds already in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = tuple(int(s) for s in args.steps.split(","))
    out = Path(args.out)
    if not args.table:
        for seed in (int(s) for s in args.seeds.split(",")):
            run_seed(seed, out, args.algorithms.split(","), steps)
    by_seed = {int(path.parent.name.removeprefix("seed")): json.loads(path.read_text())
               for path in sorted(out.glob("seed*/newcomers.json"))}
    text = f"seeds {sorted(by_seed)}\n\n" + table(by_seed, steps)
    (out / "newcomers.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
