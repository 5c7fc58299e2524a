"""How the server combines the uploads of one group of clients (all of them, or one cluster)
into one tensor: the rule ``federation.aggregation`` names, the same for every algorithm.

* ``mean``: FedAvg, the mean weighted by each client's number of training examples (the
  default; bit-identical to the sums the algorithms computed before this module existed),
  each weight capped at ``WEIGHT_CAP`` times the group's median weight: the counts are what
  the clients declare, and without a cap one client claiming 10^9 examples would take
  nearly all the weight of its group; with it, a liar weighs at most as much as
  ``WEIGHT_CAP`` clients of the median size (an honest client more than ``WEIGHT_CAP`` times
  the median is capped too).
* ``median``: the coordinate-wise median (Yin et al., 2018); with an even number of clients the
  mean of the two middle values. Unweighted: a client's declared example count cannot buy it
  influence.
* ``trimmed-mean``: per coordinate, the ``floor(trim_fraction * n)`` largest and as many
  smallest values of the ``n`` clients are dropped and the rest averaged, unweighted (Yin et
  al., 2018). ``trim_fraction`` < 0.5 always leaves at least one value; a group of fewer
  than ``1 / trim_fraction`` clients trims nothing (``effective_trim``: 0 at 0.2 for 4
  clients or fewer), where it is a plain unweighted mean.

Coordinate-wise: every entry of every tensor (each expert's A and B, each router) is combined
on its own. A rule only bounds the harm of a minority of the group it combines: a cluster of
two clients has no majority, and the median of two values is their mean.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable
from functools import partial

import torch

from fedlease.registry import Registry

Tensors = dict[str, torch.Tensor]
# the clients' tensors of one key (same shape) and their weights -> the combined tensor
AggregationRule = Callable[[list[torch.Tensor], list[float]], torch.Tensor]


# ``mean``: no client's weight above this many times the median weight of its group
WEIGHT_CAP = 2.0


def capped_weights(weights: list[float]) -> list[float]:
    """Each weight, at most ``WEIGHT_CAP`` times the median of ``weights``."""
    cap = WEIGHT_CAP * statistics.median(weights)
    return [min(float(w), cap) for w in weights]


def weighted_mean(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """FedAvg: the average weighted by each client's number of training examples, capped
    (``capped_weights``)."""
    weights = capped_weights(weights)
    total = float(sum(weights))
    return sum(t * (w / total) for t, w in zip(tensors, weights, strict=True))


def coordinate_median(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """The median of every coordinate over the clients (the weights are not used)."""
    ordered = torch.stack(tensors).sort(dim=0).values
    n = len(tensors)
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def effective_trim(n: int, trim_fraction: float) -> int:
    """How many of ``n`` values trimmed-mean leaves out at each end."""
    return math.floor(trim_fraction * n)


def warn_untrimmed_clusters(aggregation: str, trim_fraction: float,
                            trims: dict[str, int]) -> None:
    """Under trimmed-mean, a warning naming the clusters too small to trim anything."""
    untrimmed = sorted(c for c, trim in trims.items() if trim == 0)
    if aggregation == "trimmed-mean" and untrimmed:
        warnings.warn(f"federation.aggregation = 'trimmed-mean' with trim_fraction = "
                      f"{trim_fraction:g}: cluster(s) {', '.join(untrimmed)} have fewer than "
                      f"{math.ceil(1 / trim_fraction)} clients and trim nothing (an unweighted "
                      "mean there); clustering.json gives trim_per_cluster", stacklevel=2)


def trimmed_mean(tensors: list[torch.Tensor], weights: list[float],
                 trim_fraction: float) -> torch.Tensor:
    """The mean of every coordinate over the clients, its ``floor(trim_fraction * n)``
    largest and smallest values left out (the weights are not used)."""
    n = len(tensors)
    trim = effective_trim(n, trim_fraction)
    if n - 2 * trim < 1:
        raise ValueError(f"trim_fraction = {trim_fraction} leaves no value of {n}")
    ordered = torch.stack(tensors).sort(dim=0).values
    return ordered[trim:n - trim].mean(dim=0)


# federation.aggregation -> its rule, given federation.trim_fraction
AGGREGATION_RULES: Registry[Callable[[float], AggregationRule]] = Registry(
    "federation.aggregation")
AGGREGATION_RULES.register("mean", lambda trim_fraction: weighted_mean)
AGGREGATION_RULES.register("median", lambda trim_fraction: coordinate_median)
AGGREGATION_RULES.register(
    "trimmed-mean", lambda trim_fraction: partial(trimmed_mean, trim_fraction=trim_fraction))


def aggregation_rule(name: str, trim_fraction: float = 0.0) -> AggregationRule:
    """The rule ``federation.aggregation = name`` (``trim_fraction``: trimmed-mean's)."""
    return AGGREGATION_RULES[name](trim_fraction)


def aggregate_uploads(uploads: list[Tensors], weights: list[float],
                      rule: AggregationRule) -> Tensors:
    """Every key of the uploads (the keys of the first) combined over the clients by ``rule``."""
    return {key: rule([upload[key] for upload in uploads], weights) for key in uploads[0]}
