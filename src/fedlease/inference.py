"""A client's trained model on new examples: ``fedlease.load_client_model`` and ``fedlease
predict``.

The model is rebuilt from a run folder (or a ``fedlease`` export folder) alone: the base model
the run used, the client's adapters, router and head under its layout, its label names. Examples
go through the run's own evaluation path (``client_trainer``: same tokenization, ``max_length``,
batch size and precision), so the accuracy of the predictions on a client's test split is the
accuracy the run reported for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedlease.configure import load_config
from fedlease.data.client_data import Example
from fedlease.data.instructions import InstructionExample
from fedlease.data.sources import read_jsonl_rows
from fedlease.errors import DataError, ModelFileError
from fedlease.reporting.outputs import CONFIG_FILE
from fedlease.saved_models import SavedModel, load_saved_model
from fedlease.tasks import TASKS, task_of
from fedlease.tasks.classification import PLACEHOLDER_LABEL


@dataclass
class Inputs:
    """Examples to predict; ``expected`` per example: its label index (classification) or
    reference answer (generation), None where the input has none."""

    examples: list[Example] | list[InstructionExample]
    expected: list[int | str | None]


class ClientModel:
    """One client's final model (or an exported one), ready to predict."""

    def __init__(self, saved: SavedModel, device: str = "cpu"):
        from fedlease.tasks.loading import load_base_model

        train = dataclasses.replace(saved.config.train, device=device)
        self.saved = saved
        self.config = dataclasses.replace(saved.config, train=train)
        self.run_task = task_of(self.config)  # the ``Task``: what the model can be asked
        self.model, self.tokenizer = load_base_model(self.config, training=False)
        try:
            self.model.load_state(saved.state, saved.layout)
        except (KeyError, ValueError) as err:
            raise ModelFileError(f"{saved.name}: its weights do not fit the base model "
                                 f"{self.config.model.path} ({err})") from None
        self.model.eval()

    @property
    def task(self) -> str:
        """``classification`` or ``generation``."""
        return self.config.model.task

    @property
    def labels(self) -> list[str]:
        return self.saved.labels

    def _trainer(self, examples):
        """The run's evaluation path over ``examples`` (as the client's test split)."""
        from fedlease.tasks.loading import client_trainer

        data = self.run_task.client_data(self.saved.name, self.saved.task, self.labels, examples)
        return client_trainer(self.config, self.model, self.tokenizer, data)

    def _require(self, use: str, method: str) -> None:
        """``ModelFileError`` unless the model's task serves ``use`` (``Task.model_uses``)."""
        if use not in self.run_task.model_uses:
            serving = " or ".join(t.name for t in TASKS.values() if use in t.model_uses)
            raise ModelFileError(f"{method}() needs a {serving} model; {self.saved.name!r} "
                                 f"is a {self.task} model")

    def probabilities(self, examples: Sequence[Example]) -> torch.Tensor:
        """``[examples, labels]`` class probabilities."""
        self._require("predict", "predict")
        return self._trainer(examples).probabilities()

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> list[dict]:
        """Per text: ``{"label": name, "probabilities": {name: p}}``."""
        pairs = text_pairs if text_pairs is not None else [None] * len(texts)
        return self.predict_examples([Example(t, PLACEHOLDER_LABEL, p)
                                      for t, p in zip(texts, pairs, strict=True)])

    def predict_examples(self, examples: Sequence[Example]) -> list[dict]:
        self._require("predict", "predict")
        return self.run_task.records(self._trainer(examples), [None] * len(examples))

    def generate(self, prompts: Sequence[str], inputs: Sequence[str] | None = None) -> list[str]:
        """Greedy answers to instructions ``prompts`` (with their ``inputs``, if any), as the
        run generated them (``model.max_new_tokens``)."""
        inputs = inputs if inputs is not None else [""] * len(prompts)
        return self.generate_examples([InstructionExample(p, i, "")
                                       for p, i in zip(prompts, inputs, strict=True)])

    def generate_examples(self, examples: Sequence[InstructionExample]) -> list[str]:
        self._require("generate", "generate")
        return self._trainer(examples).answers()

    def evaluate(self, examples: Sequence[Example] | Sequence[InstructionExample]) -> dict:
        """The run's evaluation metrics on labelled ``examples`` (as its final evaluation)."""
        return self._trainer(examples).evaluate(self.saved.state, self.saved.layout)

    def run(self, inputs: Inputs) -> list[dict]:
        """One JSON-able record per example: the prediction and, if known, the expected one."""
        return self.run_task.records(self._trainer(inputs.examples), inputs.expected)


def load_client_model(path: str | Path, client_id: str | None = None,
                      device: str = "cpu") -> ClientModel:
    """Client ``client_id``'s final model from a run folder, or the model of a ``fedlease``
    export folder (``client_id`` not needed)::

        model = fedlease.load_client_model("runs/latest", "sentiment-0")
        model.predict(["A moving, beautifully acted film."])  # [{"label": ..., ...}]
    """
    return ClientModel(load_saved_model(path, client_id), device)


def score(records: list[dict], task: str) -> dict[str, float]:
    """The run's metrics (of ``task``, a ``model.task``) over the records that have an expected
    value: accuracy for classification; ROUGE-L and exact match for generation."""
    scored = [r for r in records if "expected" in r]
    return TASKS[task].score(scored) if scored else {}


# -- where the examples come from ---------------------------------------------------------

def text_inputs(model: ClientModel, text: str) -> Inputs:
    """One text to classify, or one instruction to answer."""
    return Inputs([model.run_task.text_example(text)], [None])


def file_inputs(model: ClientModel, path: str | Path, split: str | None = None) -> Inputs:
    """The lines of a training-data file (a client's JSONL file: ``{"text", "text_pair"?,
    "label"?}`` or ``{"instruction", "input"?, "output"?}``); ``split``: only the lines of
    that ``"split"``. Labels must be the client's."""
    rows = [(where, row)
            for where, row in read_jsonl_rows(Path(path), model.run_task.check_input_row)
            if split is None or row.get("split") == split]
    if not rows:
        raise DataError(f"{path}: no examples" + (f" with \"split\": \"{split}\"" if split
                                                  else ""))
    return Inputs(*model.run_task.input_examples(rows, model.labels, model.saved.name))


def run_split_inputs(model: ClientModel, run_dir: str | Path, split: str) -> Inputs:
    """Client's ``split`` ("train"/"test") of the run's own data, rebuilt from its
    ``config.toml`` exactly as the run built it."""
    from fedlease.tasks.loading import load_clients

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise ModelFileError(f"--split reads the data of a run: {run_dir} is not a run folder "
                             "(no config.toml); give the examples with --input FILE")
    config = load_config(run_dir / CONFIG_FILE)
    clients = {c.client_id: c for c in load_clients(config)}
    if model.saved.name not in clients:
        raise DataError(f"{run_dir}: the run's data ({config.data.source}) has no client "
                        f"{model.saved.name!r} now")
    examples = getattr(clients[model.saved.name], split)
    return Inputs(examples, [model.run_task.expected(ex) for ex in examples])
