"""Federated algorithms, by the name used in configs and on the command line."""

from fedlease.algorithms.base import Algorithm, ClientInfo, Instruction, Reply
from fedlease.algorithms.fedlease import FedLEASE

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (FedLEASE,)}

__all__ = ["ALGORITHMS", "Algorithm", "ClientInfo", "Instruction", "Reply"]
