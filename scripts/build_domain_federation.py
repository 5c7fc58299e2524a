"""Build a federation nobody tuned the allocation for: one task in several text domains beside
other tasks, as a JSONL folder (``data.source = "jsonl"``).

Sentiment (negative/positive) in three domains — tweets, Amazon review snippets, New York Times
editorial snippets, from the human ratings of ``vaderSentiment==3.3.2``'s sdist
(``additional_resources/hutto_ICWSM_2014.tar.gz``; score <= -0.5 negative, >= 0.5 positive,
the rest dropped) — 2 clients each, and the built-in news and spam tasks, 3 clients each:
12 clients, 3 tasks, 5 text sources. A clustering by task puts the 6 sentiment clients together;
a clustering by text domain splits them. The data is built locally, never shipped:

    pip download vaderSentiment==3.3.2 --no-deps --no-binary :all: -d /tmp/vader
    python scripts/build_domain_federation.py /tmp/vader/vaderSentiment-3.3.2.tar.gz runs/domains
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

from fedlease.config import DataConfig
from fedlease.data.client_data import Example, split_task
from fedlease.data.sources import load_builtin

DOMAINS = {"tweets": "tweets_GroundTruth.txt", "amazon": "amazonReviewSnippets_GroundTruth.txt",
           "nyt": "nytEditorialSnippets_GroundTruth.txt"}
LABELS = ["negative", "positive"]


def read_ratings(sdist: Path) -> dict[str, list[Example]]:
    """Domain -> labelled sentences, from the ratings files inside the sdist's inner archive."""
    with tarfile.open(sdist) as outer:
        inner_member = next(m for m in outer.getmembers()
                            if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(inner_member).read()
    pools = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for domain, name in DOMAINS.items():
            member = next(m for m in inner.getmembers() if m.name.endswith(name))
            text = inner.extractfile(member).read().decode("utf-8", errors="replace")
            examples = []
            for line in text.splitlines():
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                score, sentence = float(parts[1]), " ".join(parts[2:]).strip()
                if sentence and abs(score) >= 0.5:
                    examples.append(Example(sentence[:400], int(score > 0)))
            pools[domain] = examples
    return pools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sdist", type=Path, help="vaderSentiment-3.3.2.tar.gz")
    parser.add_argument("out", type=Path, help="folder to write (client JSONL + manifest)")
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--test", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    clients = []
    for domain, pool in read_ratings(args.sdist).items():
        clients += [(c, "sentiment", domain)
                    for c in split_task(domain, LABELS, pool, 2, args.train, args.test,
                                        args.seed)]
    builtin = load_builtin(DataConfig(tasks=["news", "spam"], clients_per_task=3,
                                      train_per_client=args.train,
                                      test_per_client=args.test), args.seed)
    clients += [(c, c.task, c.task) for c in builtin]
    args.out.mkdir(parents=True, exist_ok=True)
    manifest, domains, labels = {}, {}, {}
    for client, task, domain in clients:
        manifest[client.client_id] = task
        domains[client.client_id] = domain
        labels[task] = client.labels
        rows = [{"text": ex.text, "text_pair": ex.text_pair, "label": client.labels[ex.label],
                 "split": split} for split in ("train", "test")
                for ex in getattr(client, split)]
        rows = [{k: v for k, v in row.items() if v is not None} for row in rows]
        (args.out / f"{client.client_id}.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in rows))
    (args.out / "manifest.json").write_text(json.dumps(
        {"clients": manifest, "labels": labels}, indent=1))
    # each client's text source, for scripts/allocation_study.py (fedlease itself ignores it)
    (args.out / "domains.json").write_text(json.dumps(domains, indent=1))
    print(f"{len(clients)} clients in {args.out}: " + ", ".join(
        f"{d} x {list(domains.values()).count(d)}" for d in dict.fromkeys(domains.values())))


if __name__ == "__main__":
    main()
