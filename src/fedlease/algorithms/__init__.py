"""Federated algorithms, by the name used in configs and on the command line."""

from fedlease.algorithms.base import Algorithm
from fedlease.algorithms.feddpa import FedDPA
from fedlease.algorithms.fedit import FedIT
from fedlease.algorithms.fedlease import FedLEASE
from fedlease.algorithms.fedlease_ablations import FedLEASEFixedTopM, FedLEASENoCluster
from fedlease.algorithms.fedsa_lora import FedSALoRA
from fedlease.algorithms.ffa_lora import FFALoRA
from fedlease.algorithms.ifca_lora import IFCALoRA
from fedlease.algorithms.local import LocalLoRA
from fedlease.algorithms.messages import ClientInfo, Instruction, Reply
from fedlease.registry import Registry

# in the order of the comparison table: FedLEASE, its ablations, then the baselines
ALGORITHMS: Registry[type[Algorithm]] = Registry("federation.algorithm", {cls.name: cls for cls in (
    FedLEASE, FedLEASEFixedTopM, FedLEASENoCluster,
    LocalLoRA, FedIT, FFALoRA, FedSALoRA, FedDPA, IFCALoRA,
)})

__all__ = ["ALGORITHMS", "Algorithm", "ClientInfo", "Instruction", "Reply"]
