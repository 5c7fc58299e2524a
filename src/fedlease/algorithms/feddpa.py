"""FedDPA (Yang et al., 2024), dual-personalising adapters: every adapted layer holds a global
LoRA (expert 0, averaged over all clients with FedAvg) and a personal LoRA (expert 1, never
leaves the client); both train in every local round.

The combination implemented: ``y = W0 x + (alpha/r) (B_g A_g + B_p A_p) x``, the two adapters
added with equal weight, in training and at test time (FedDPA-T's training-time combination).
The paper's test-time instance-wise dynamic weighting of the two adapters (a weight per input
from its similarity to the client's training inputs) is not implemented.
"""

from fedlease.algorithms.shared_lora import SharedLoRA


class FedDPA(SharedLoRA):
    name = "feddpa"
    num_experts = 2
    shared_experts = (0,)
    shared_parts = ("lora_A", "lora_B")
