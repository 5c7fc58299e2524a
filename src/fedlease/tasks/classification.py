"""Classification: a sequence encoder with a per-client head; each client's labels are its own.

Examples are tokenized once per client and padded per batch, never to a fixed length. Scored by
accuracy (and the mean cross-entropy, ``loss``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from fedlease.config.schema import DataConfig, ModelConfig, RunConfig
from fedlease.data.client_data import ClientData, Example
from fedlease.data.sources import check_labelled_row, load_jsonl_folder, load_source_clients
from fedlease.errors import DataError
from fedlease.model.classifier import FederatedClassifier, default_model_path, load_classifier
from fedlease.model.lora import AdapterLayout
from fedlease.tasks.base import Task, pretrained_options
from fedlease.training import LocalTrainer, local_update_options

PLACEHOLDER_LABEL = 0  # label of an example to predict whose label is unknown (never scored)


class ClassificationTask(Task):
    """Label classification with a sequence encoder and a head of each client's own."""

    name = "classification"
    metric = "accuracy"
    columns = ("accuracy",)
    metric_label = "test accuracy"
    has_head = True
    peft_task_type = None
    auto_class = "AutoModel"
    model_uses = ("predict",)

    def default_model_path(self) -> str:
        return default_model_path()

    def load_model(self, path: str, config: RunConfig):
        return load_classifier(path, config.model.target_modules, config.lora.rank,
                               config.lora.alpha, config.lora.dropout, config.train.device,
                               **pretrained_options(config))

    def longest_input(self, model: ModelConfig) -> tuple[int, str]:
        return model.max_length, "model.max_length"

    def load_clients(self, data: DataConfig, seed: int) -> list[ClientData]:
        return load_source_clients(data, seed)

    def load_folder(self, folder: Path) -> list[ClientData]:
        return load_jsonl_folder(folder)

    def trainer(self, config: RunConfig, model, tokenizer,
                client: ClientData) -> ClassificationTrainer:
        return ClassificationTrainer(model, tokenizer, client, max_length=config.model.max_length,
                                     **local_update_options(config))

    def client_data(self, client_id: str, task: str, labels: list[str],
                    examples: list[Example]) -> ClientData:
        return ClientData(client_id, task, labels, [], list(examples))

    def records(self, trainer: ClassificationTrainer, expected: list) -> list[dict]:
        """``{"label": name, "probabilities": {name: p}}`` (+ the expected label's name)."""
        labels = trainer.data.labels
        records = []
        for p, e in zip(trainer.probabilities(), expected, strict=True):
            record = {"label": labels[int(p.argmax())],
                      "probabilities": {name: float(v)
                                        for name, v in zip(labels, p.tolist(), strict=True)}}
            records.append(record if e is None else {**record, "expected": labels[e]})
        return records

    def score(self, records: list[dict]) -> dict[str, float]:
        return {"accuracy": sum(r["label"] == r["expected"] for r in records) / len(records)}

    def text_example(self, text: str) -> Example:
        return Example(text, PLACEHOLDER_LABEL)

    def check_input_row(self, where: str, row: dict) -> None:
        check_labelled_row(where, row, label_required=False)

    def input_examples(self, rows: list[tuple[str, dict]], labels: list[str],
                       client_id: str) -> tuple[list[Example], list[int | None]]:
        """Labels must be the client's."""
        expected = []
        for where, row in rows:
            if "label" in row and str(row["label"]) not in labels:
                raise DataError(f"{where}: label {row['label']!r} is not one of client "
                                f"{client_id!r}'s labels {labels}")
            expected.append(labels.index(str(row["label"])) if "label" in row else None)
        return [Example(r["text"], PLACEHOLDER_LABEL if e is None else e, r.get("text_pair"))
                for (_, r), e in zip(rows, expected, strict=True)], expected

    def expected(self, example: Example) -> int:
        return example.label


@dataclass
class TokenizedSplit:
    features: list[dict[str, list[int]]]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.features)


def tokenize(tokenizer, examples: list[Example], max_length: int) -> TokenizedSplit:
    if not examples:  # a split to predict on has no training part (the tokenizer rejects [])
        return TokenizedSplit([], torch.empty(0, dtype=torch.long))
    texts = [ex.text for ex in examples]
    pairs = [ex.text_pair for ex in examples]
    has_pairs = any(p is not None for p in pairs)
    enc = tokenizer(texts, pairs if has_pairs else None, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(examples))]
    return TokenizedSplit(features, torch.tensor([ex.label for ex in examples]))


def collate(features: list[dict[str, list[int]]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of this batch."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {}
    for key in features[0]:
        fill = pad_id if key == "input_ids" else 0
        rows = [f[key] + [fill] * (width - len(f[key])) for f in features]
        batch[key] = torch.tensor(rows, device=device)
    return batch


class ClassificationTrainer(LocalTrainer):
    """One client's classification data, tokenized once, and the shared model it trains on."""

    def __init__(self, model: FederatedClassifier, tokenizer, data: ClientData, *,
                 max_length: int, batch_size: int, local_epochs: int, lr: float,
                 weight_decay: float, autocast_dtype: torch.dtype | None = None):
        super().__init__(model, batch_size=batch_size, local_epochs=local_epochs, lr=lr,
                         weight_decay=weight_decay, autocast_dtype=autocast_dtype)
        self.data = data
        self.pad_id = tokenizer.pad_token_id or 0
        self.train_split = tokenize(tokenizer, data.train, max_length)
        self.test_split = tokenize(tokenizer, data.test, max_length)

    @property
    def num_train(self) -> int:
        return len(self.train_split)

    @property
    def num_test(self) -> int:
        return len(self.test_split)

    def new_head(self, seed: int) -> dict[str, torch.Tensor]:
        return self.model.new_head(self.data.num_labels, torch.Generator().manual_seed(seed))

    def batches(self, on: str, order: torch.Tensor):
        split = self.test_split if on == "test" else self.train_split
        device = self.model.device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = collate([split.features[i] for i in idx.tolist()], self.pad_id, device)
            yield batch, split.labels[idx].to(device)

    def representations(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.pooled(**inputs)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.autocast():
            return self.model(**batch).float()

    def loss(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(inputs), targets)

    @torch.no_grad()
    def train_loss(self, state: dict[str, torch.Tensor], layout: AdapterLayout) -> float:
        """The loss its evaluation reports on the training split (summed per example)."""
        return self.evaluate(state, layout, on="train")["loss"]

    def probabilities(self, on: str = "test") -> torch.Tensor:
        """``[examples, labels]`` class probabilities of split ``on`` (under the loaded state)."""
        split = self.test_split if on == "test" else self.train_split
        rows = [torch.softmax(self.logits(batch), -1).cpu()
                for batch, _ in self.batches(on, torch.arange(len(split)))]
        return torch.cat(rows) if rows else torch.empty(0, self.data.num_labels)

    @torch.no_grad()
    def evaluate(self, state: dict[str, torch.Tensor], layout: AdapterLayout,
                 on: str = "test") -> dict[str, float]:
        """Accuracy and mean loss on this client's test (or train) split."""
        split = self.test_split if on == "test" else self.train_split
        self.model.load_state(state, layout)
        self.model.eval()
        start = time.perf_counter()
        correct, loss_sum = 0, 0.0
        for batch, labels in self.batches(on, torch.arange(len(split))):
            logits = self.logits(batch)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(-1) == labels).sum())
        n = max(len(split), 1)
        return {"accuracy": correct / n, "loss": loss_sum / n,
                "eval_seconds": time.perf_counter() - start}
