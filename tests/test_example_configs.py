"""The example configs added for issue #26 load as written."""

from pathlib import Path

from fedlease.configure import load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_instructions_example_uses_every_builtin_instruction_task():
    config = load_config(EXAMPLES / "instructions.toml")
    assert config.data.source == "instructions" and config.model.task == "generation"
    assert sorted(config.data.tasks) == ["headline", "sentiment_reason", "spelling", "subject"]


def test_paper_gpu_example_has_the_papers_setting():
    config = load_config(EXAMPLES / "paper_generation_gpu.toml")
    clients = len(config.data.tasks) * config.data.clients_per_task
    assert (clients, config.federation.rounds, config.train.batch_size, config.lora.rank,
            config.federation.max_experts) == (8, 10, 8, 8, 8)  # M_max: the paper's notes
    assert config.model.quantization == "4bit" and config.train.device == "cuda"
