"""How the server combines the uploads of one group of clients (all of them, or one cluster)
into one tensor: the rule ``federation.aggregation`` names, the same for every algorithm.

* ``mean``: FedAvg, the mean weighted by each client's number of training examples (the
  default; bit-identical to the sums the algorithms computed before this module existed).
* ``median``: the coordinate-wise median (Yin et al., 2018); with an even number of clients the
  mean of the two middle values. Unweighted: a client's declared example count cannot buy it
  influence.
* ``trimmed-mean``: per coordinate, the ``floor(trim_fraction * n)`` largest and as many
  smallest values of the ``n`` clients are dropped and the rest averaged, unweighted (Yin et
  al., 2018). ``trim_fraction`` < 0.5 always leaves at least one value.

Coordinate-wise: every entry of every tensor (each expert's A and B, each router) is combined
on its own. A rule only bounds the harm of a minority of the group it combines: a cluster of
two clients has no majority, and the median of two values is their mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from fedlease.registry import Registry

Tensors = dict[str, torch.Tensor]
# the clients' tensors of one key (same shape) and their weights -> the combined tensor
AggregationRule = Callable[[list[torch.Tensor], list[float]], torch.Tensor]


def weighted_mean(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """FedAvg: the average weighted by each client's number of training examples."""
    total = float(sum(weights))
    return sum(t * (w / total) for t, w in zip(tensors, weights, strict=True))


def coordinate_median(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """The median of every coordinate over the clients (the weights are not used)."""
    ordered = torch.stack(tensors).sort(dim=0).values
    n = len(tensors)
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trimmed_mean(tensors: list[torch.Tensor], weights: list[float],
                 trim_fraction: float) -> torch.Tensor:
    """The mean of every coordinate over the clients, its ``floor(trim_fraction * n)``
    largest and smallest values left out (the weights are not used)."""
    n = len(tensors)
    trim = math.floor(trim_fraction * n)
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
