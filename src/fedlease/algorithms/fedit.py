"""FedIT (Zhang et al., 2024): FedAvg of the whole LoRA (A and B) over all clients."""

from fedlease.algorithms.shared_lora import SharedLoRA


class FedIT(SharedLoRA):
    name = "fedit"
    shared_parts = ("lora_A", "lora_B")
