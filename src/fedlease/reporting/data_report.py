"""What the federation's data looks like: per client its task, sizes and label counts.

Written to ``OUT/data.json`` before training (so a skewed partition shows before time is spent)
and drawn as ``OUT/plots/label_histogram.png`` at the end of the run.
"""

from __future__ import annotations

from collections import Counter


def client_data_summary(client, label_counts: bool = True) -> dict:
    """``{"task", "train", "test"}`` sizes, plus ``"train_labels"`` / ``"test_labels"``
    (label name -> count, in label order) for a labelled (classification) client if
    ``label_counts`` (a Flower node sends them only when its operator opts in)."""
    summary = {"task": client.task, "train": len(client.train), "test": len(client.test)}
    labels = getattr(client, "labels", None)
    if labels is not None and label_counts:
        for part in ("train", "test"):
            counts = Counter(example.label for example in getattr(client, part))
            summary[f"{part}_labels"] = {name: counts[i] for i, name in enumerate(labels)}
    return summary


def data_report(clients) -> dict:
    """The ``data.json`` payload: every client's summary, in federation order."""
    return {"clients": {client.client_id: client_data_summary(client) for client in clients}}
