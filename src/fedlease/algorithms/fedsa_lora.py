"""FedSA-LoRA (Guo et al., 2025): A and B both train; A (general knowledge) is averaged over all
clients, B (client-specific) stays local and never leaves the client."""

from fedlease.algorithms.shared_lora import SharedLoRA


class FedSALoRA(SharedLoRA):
    name = "fedsa-lora"
    shared_parts = ("lora_A",)
