"""What a task provides: everything of a run that depends on what its clients learn to do.

A task (classification, generation) is one module of this package: a ``Task`` subclass and its
trainer (a ``LocalTrainer``), named in ``TASKS`` (``__init__.py``). The rest of the package asks
the run's task (``task_of(config)``) and never branches on its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from fedlease.config.schema import DataConfig, ModelConfig, RunConfig
from fedlease.training import LocalTrainer


class Task(ABC):
    name: ClassVar[str]  # ``model.task`` in a config
    # the primary metric: a key of every client's evaluation metrics; runs are ranked by it
    metric: ClassVar[str]
    # the metrics of the summary table and of each round's means, the primary metric first
    columns: ClassVar[tuple[str, ...]]
    metric_label: ClassVar[str]  # the primary metric on a plot's axis and in a comparison
    # config values of this task that differ from RunConfig's defaults ({"section": {key:
    # value}}); a value in the config file or an override wins
    defaults: ClassVar[dict[str, dict]] = {}
    has_head: ClassVar[bool]  # each client has its own head (exported beside the LoRA)
    peft_task_type: ClassVar[str | None]  # ``task_type`` of an exported adapter_config.json
    auto_class: ClassVar[str]  # the transformers class that loads the base model
    # what a trained model of this task does for ``fedlease.inference.ClientModel``: "predict"
    # (class probabilities and labels) and/or "generate" (answers to instructions)
    model_uses: ClassVar[tuple[str, ...]]

    def config_problems(self, config: RunConfig) -> list[str]:
        """What in ``config`` this task cannot run with, one message per problem (run with the
        other checks when a config is loaded, ``fedlease.configure``); none here."""
        return []

    # -- the model ------------------------------------------------------------------------

    @abstractmethod
    def default_model_path(self) -> str:
        """The base model of ``model.path = ""``."""

    @abstractmethod
    def load_model(self, path: str, config: RunConfig):
        """The frozen base model at ``path`` with the config's adapters injected (on
        ``train.device``), and its tokenizer."""

    @abstractmethod
    def longest_input(self, model: ModelConfig) -> tuple[int, str]:
        """The most positions an example may take, and the config keys that set it."""

    # -- the data -------------------------------------------------------------------------

    @abstractmethod
    def load_clients(self, data: DataConfig, seed: int) -> list:
        """The federation's clients, from the ``[data]`` config."""

    @abstractmethod
    def load_folder(self, folder: Path) -> list:
        """The clients of a folder of per-client JSONL files (a Flower node's own data)."""

    @abstractmethod
    def trainer(self, config: RunConfig, model, tokenizer, client) -> LocalTrainer:
        """The local trainer of ``client`` over the shared ``model``."""

    # -- a trained model on new examples (``fedlease predict``) ------------------------------

    @abstractmethod
    def client_data(self, client_id: str, task: str, labels: list[str], examples: list):
        """A client (``task``: its task name) whose test split is ``examples``."""

    @abstractmethod
    def records(self, trainer: LocalTrainer, expected: list) -> list[dict]:
        """One JSON-able record per test example of ``trainer``: the prediction and, where
        ``expected`` holds one (not None), the expected value under ``"expected"``."""

    @abstractmethod
    def score(self, records: list[dict]) -> dict[str, float]:
        """The run's metrics over ``records`` that all hold an expected value."""

    @abstractmethod
    def text_example(self, text: str):
        """The example of one text given on the command line."""

    @abstractmethod
    def check_input_row(self, where: str, row: dict) -> None:
        """Raise ``DataError`` (naming ``where``) unless ``row`` of an input file is an example;
        its expected value may be missing."""

    @abstractmethod
    def input_examples(self, rows: list[tuple[str, dict]], labels: list[str],
                       client_id: str) -> tuple[list, list]:
        """The examples of checked input ``(where, row)`` pairs, and their expected values
        (None where a row has none)."""

    @abstractmethod
    def expected(self, example):
        """The expected value of one of a client's own examples."""


def pretrained_options(config: RunConfig) -> dict:
    """How ``model.path`` is found and loaded (``model.load_pretrained``'s keywords): a hub
    id's download and revision, the base's quantization."""
    return {"download": config.model.download, "revision": config.model.revision,
            "quantization": config.model.quantization}
