"""Local LoRA: every client trains its own LoRA and head alone; nothing is uploaded."""

from fedlease.algorithms.shared_lora import SharedLoRA


class LocalLoRA(SharedLoRA):
    name = "local"
    shared_parts = ()
