"""FFA-LoRA (Sun et al., 2024): A stays frozen at the shared seeded init (it is a buffer, never
a parameter); only B trains and is averaged over all clients. Averaging B alone is then exact
FedAvg of the LoRA update ``B A``."""

from fedlease.algorithms.shared_lora import SharedLoRA


class FFALoRA(SharedLoRA):
    name = "ffa-lora"
    shared_parts = ("lora_B",)
    train_A = False
