"""The server's side of privacy: the guarantee a run states (``privacy.json``, ``run.json``,
the summary), and the budget stop: no round starts that would take a client past epsilon.

The server learns each client's spending from its replies (``epsilon``, ``epsilon_next``,
``dp_noisy_steps`` in the round's metrics); the mechanism it states per client (noise
multiplier, sampling rate, delta) is the calibration the client ran, recomputed from the config
and the client's training-set size (``accounting.calibrate`` is deterministic), so anyone can
recompute the epsilon with another accountant.
"""

from __future__ import annotations

from fedlease.config.schema import RunConfig
from fedlease.privacy.accounting import (
    EPSILON_SLACK,
    RELATION,
    RELATION_TEXT,
    calibrate,
)

PROTECTED = ("each client's training examples: replacing one of them by a null example "
             "(zero-out) changes what the client sends (its uploads, its allocation vector) and "
             "so the server's models and every other client's, by at most (epsilon, delta); "
             "replacing it by another example, by at most (2 epsilon, (1 + e^epsilon) "
             "delta) (group privacy); against the server, the other clients and anyone who "
             "sees the uploads or the models")
NOT_PROTECTED = (
    "the evaluation metrics each client reports every round (accuracy, loss on its test split)",
    "the number of training examples and the label names of each client",
    "IFCA's cluster choice: the index of the cluster with the lowest training loss (not "
    "counted in epsilon)",
    "with privacy.seeded_noise = true the server sends the seeds of the noise: an experiment "
    "setting, no guarantee against the server",
    "groups of examples (a person with many records) beyond what group privacy gives",
)


def latest_metrics(history: list[dict]) -> dict[str, dict]:
    """Per client, the metrics of the last round it trained in (holding ``epsilon``)."""
    latest = {}
    for entry in history:
        for cid, metrics in entry["clients"].items():
            if "epsilon" in metrics:
                latest[cid] = metrics
    return latest


def over_budget(config: RunConfig, history: list[dict]) -> list[str]:
    """The clients whose next round would spend more than ``privacy.epsilon``."""
    return sorted(cid for cid, m in latest_metrics(history).items()
                  if m["epsilon_next"] > config.privacy.epsilon + EPSILON_SLACK)


def privacy_report(config: RunConfig, num_train: dict[str, int], releases_embedding: bool,
                   history: list[dict], stopped_before: int | None) -> dict:
    """The guarantee of a DP run and each client's mechanism and spending."""
    privacy, latest = config.privacy, latest_metrics(history)
    clients = {}
    for cid, n in num_train.items():
        plan = calibrate(privacy, num_train=n, batch_size=config.train.batch_size,
                         local_epochs=config.train.local_epochs,
                         rounds=config.federation.rounds, releases_embedding=releases_embedding)
        spent = latest.get(cid, {})
        clients[cid] = {
            "epsilon": spent.get("epsilon", 0.0), "delta": plan.delta,
            "accountant": plan.accountant, "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate, "sampling": "poisson",
            "noisy_steps": int(spent.get("dp_noisy_steps", 0)),
            "steps_per_round": plan.steps_per_round, "max_grad_norm": plan.max_grad_norm,
            "embedding": ({"noise_multiplier": plan.embedding_noise_multiplier,
                           "sensitivity": plan.embedding_sensitivity,
                           "noise_std": plan.embedding_std,
                           "releases": 1} if releases_embedding else None),
        }
    return {
        "guarantee": (f"({privacy.epsilon:g}, delta)-differential privacy per client for the "
                      f"whole run, example-level, {RELATION} neighbours; delta per client "
                      "below"),
        "neighbouring_relation": RELATION,
        "neighbouring_relation_meaning": RELATION_TEXT,
        "epsilon_target": privacy.epsilon,
        "mechanism": ("DP-SGD (Opacus): Poisson sampling, per-example clipping of every "
                      "trainable tensor to max_grad_norm, Gaussian noise; the allocation "
                      "vector: a Gaussian mechanism on the mean of unit-length representations"
                      if releases_embedding else "DP-SGD (Opacus): Poisson sampling, "
                      "per-example clipping of every trainable tensor, Gaussian noise"),
        "protected": PROTECTED,
        "not_protected": list(NOT_PROTECTED),
        "noise_seeds": "from the server (seeded_noise)" if privacy.seeded_noise
        else "secret to each client",
        "stopped_before_round": stopped_before,
        "clients": clients,
    }


def summary_lines(report: dict) -> list[str]:
    """The summary's privacy lines: the target and the most any client spent."""
    spent = max((c["epsilon"] for c in report["clients"].values()), default=0.0)
    lines = [f"{'privacy: epsilon target':<38} {report['epsilon_target']:>11.3g}",
             f"{'privacy: neighbouring relation':<38} {report['neighbouring_relation']:>11}",
             f"{'privacy: most epsilon a client spent':<38} {spent:>11.3f}"]
    if report["stopped_before_round"] is not None:
        lines.append(f"{'privacy: budget stop before round':<38} "
                     f"{report['stopped_before_round']:>11d}")
    return lines
