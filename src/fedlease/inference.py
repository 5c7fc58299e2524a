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
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedlease.config import load_config
from fedlease.data.federation import ClientData, DataError, Example
from fedlease.data.instructions import (
    InstructionClientData,
    InstructionExample,
    check_instruction_row,
)
from fedlease.data.sources import check_labelled_row, read_jsonl_rows
from fedlease.generation import normalize_answer, rouge_l
from fedlease.saved_models import ModelFileError, SavedModel, load_saved_model

PLACEHOLDER_LABEL = 0  # label of an example to predict whose label is unknown (never scored)


@dataclass
class Inputs:
    """Examples to predict; ``expected`` per example: its label index (classification) or
    reference answer (generation), None where the input has none."""

    examples: list[Example] | list[InstructionExample]
    expected: list[int | str | None]


class ClientModel:
    """One client's final model (or an exported one), ready to predict."""

    def __init__(self, saved: SavedModel, device: str = "cpu"):
        from fedlease.runners.simulator import load_base_model

        train = dataclasses.replace(saved.config.train, device=device)
        self.saved = saved
        self.config = dataclasses.replace(saved.config, train=train)
        self.model, self.tokenizer = load_base_model(self.config)
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
        from fedlease.runners.simulator import client_trainer

        if self.task == "classification":
            data = ClientData(self.saved.name, self.saved.task, self.labels, [], list(examples))
        else:
            data = InstructionClientData(self.saved.name, self.saved.task, [], list(examples))
        return client_trainer(self.config, self.model, self.tokenizer, data)

    def _require(self, task: str, method: str) -> None:
        if self.task != task:
            raise ModelFileError(f"{method}() needs a {task} model; {self.saved.name!r} is a "
                                 f"{self.task} model")

    @torch.no_grad()
    def probabilities(self, examples: Sequence[Example]) -> torch.Tensor:
        """``[examples, labels]`` class probabilities."""
        self._require("classification", "predict")
        trainer = self._trainer(examples)
        rows = [torch.softmax(trainer.logits(batch), -1).cpu()
                for batch, _ in trainer.batches("test", torch.arange(len(examples)))]
        return torch.cat(rows) if rows else torch.empty(0, len(self.labels))

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> list[dict]:
        """Per text: ``{"label": name, "probabilities": {name: p}}``."""
        pairs = text_pairs if text_pairs is not None else [None] * len(texts)
        return self.predict_examples([Example(t, PLACEHOLDER_LABEL, p)
                                      for t, p in zip(texts, pairs, strict=True)])

    def predict_examples(self, examples: Sequence[Example]) -> list[dict]:
        probs = self.probabilities(examples)
        return [{"label": self.labels[int(p.argmax())],
                 "probabilities": {name: float(v) for name, v in zip(self.labels, p.tolist(),
                                                                     strict=True)}}
                for p in probs]

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], inputs: Sequence[str] | None = None) -> list[str]:
        """Greedy answers to instructions ``prompts`` (with their ``inputs``, if any), as the
        run generated them (``model.max_new_tokens``)."""
        inputs = inputs if inputs is not None else [""] * len(prompts)
        return self.generate_examples([InstructionExample(p, i, "")
                                       for p, i in zip(prompts, inputs, strict=True)])

    @torch.no_grad()
    def generate_examples(self, examples: Sequence[InstructionExample]) -> list[str]:
        self._require("generation", "generate")
        trainer = self._trainer(examples)
        split, size = trainer.splits["test"], self.config.train.batch_size
        return [answer for first in range(0, len(split), size)
                for answer in trainer.predict(split[first : first + size])]

    def evaluate(self, examples: Sequence[Example] | Sequence[InstructionExample]) -> dict:
        """The run's evaluation metrics on labelled ``examples`` (as its final evaluation)."""
        return self._trainer(examples).evaluate(self.saved.state, self.saved.layout)

    def run(self, inputs: Inputs) -> list[dict]:
        """One JSON-able record per example: the prediction and, if known, the expected one."""
        if self.task == "classification":
            records = self.predict_examples(inputs.examples)
            named = [None if e is None else self.labels[e] for e in inputs.expected]
        else:
            records = [{"answer": a} for a in self.generate_examples(inputs.examples)]
            named = inputs.expected
        return [{**r, "expected": e} if e is not None else r
                for r, e in zip(records, named, strict=True)]


def load_client_model(path: str | Path, client_id: str | None = None,
                      device: str = "cpu") -> ClientModel:
    """Client ``client_id``'s final model from a run folder, or the model of a ``fedlease``
    export folder (``client_id`` not needed)::

        model = fedlease.load_client_model("runs/latest", "sentiment-0")
        model.predict(["A moving, beautifully acted film."])  # [{"label": ..., ...}]
    """
    return ClientModel(load_saved_model(path, client_id), device)


def score(records: list[dict], task: str) -> dict[str, float]:
    """The run's metrics over the records that have an expected value: accuracy for
    classification; ROUGE-L, exact match (and ``accuracy`` = exact match) for generation."""
    scored = [r for r in records if "expected" in r]
    if not scored:
        return {}
    n = len(scored)
    if task == "classification":
        return {"accuracy": sum(r["label"] == r["expected"] for r in scored) / n}
    exact = sum(normalize_answer(r["answer"]) == normalize_answer(r["expected"])
                for r in scored) / n
    return {"rouge_l": sum(rouge_l(r["expected"], r["answer"]) for r in scored) / n,
            "exact_match": exact, "accuracy": exact}


# -- where the examples come from ---------------------------------------------------------

def text_inputs(model: ClientModel, text: str) -> Inputs:
    """One text to classify, or one instruction to answer."""
    if model.task == "classification":
        return Inputs([Example(text, PLACEHOLDER_LABEL)], [None])
    return Inputs([InstructionExample(text, "", "")], [None])


def file_inputs(model: ClientModel, path: str | Path, split: str | None = None) -> Inputs:
    """The lines of a training-data file (a client's JSONL file: ``{"text", "text_pair"?,
    "label"?}`` or ``{"instruction", "input"?, "output"?}``); ``split``: only the lines of
    that ``"split"``. Labels must be the client's."""
    if model.task == "classification":
        check = functools.partial(check_labelled_row, label_required=False)
    else:
        check = functools.partial(check_instruction_row, output_required=False)
    rows = [(where, row) for where, row in read_jsonl_rows(Path(path), check)
            if split is None or row.get("split") == split]
    if not rows:
        raise DataError(f"{path}: no examples" + (f" with \"split\": \"{split}\"" if split
                                                  else ""))
    if model.task == "generation":
        return Inputs([InstructionExample(r["instruction"], r.get("input", ""),
                                          r.get("output", "")) for _, r in rows],
                      [r.get("output") for _, r in rows])
    expected = []
    for where, row in rows:
        if "label" in row and str(row["label"]) not in model.labels:
            raise DataError(f"{where}: label {row['label']!r} is not one of client "
                            f"{model.saved.name!r}'s labels {model.labels}")
        expected.append(model.labels.index(str(row["label"])) if "label" in row else None)
    return Inputs([Example(r["text"], PLACEHOLDER_LABEL if e is None else e, r.get("text_pair"))
                   for (_, r), e in zip(rows, expected, strict=True)], expected)


def run_split_inputs(model: ClientModel, run_dir: str | Path, split: str) -> Inputs:
    """Client's ``split`` ("train"/"test") of the run's own data, rebuilt from its
    ``config.toml`` exactly as the run built it."""
    from fedlease.runners.simulator import load_clients

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").exists():
        raise ModelFileError(f"--split reads the data of a run: {run_dir} is not a run folder "
                             "(no config.toml); give the examples with --input FILE")
    config = load_config(run_dir / "config.toml")
    clients = {c.client_id: c for c in load_clients(config)}
    if model.saved.name not in clients:
        raise DataError(f"{run_dir}: the run's data ({config.data.source}) has no client "
                        f"{model.saved.name!r} now")
    examples = getattr(clients[model.saved.name], split)
    if model.task == "classification":
        return Inputs(examples, [ex.label for ex in examples])
    return Inputs(examples, [ex.output for ex in examples])
