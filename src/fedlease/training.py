"""A client's local work on the shared model: train the trainable part of its state, evaluate.

This is the engine-agnostic client update: state (``dict[str, Tensor]``) and an
``AdapterLayout`` in, state and metrics out. The simulator and the Flower ClientApp both call it.
Examples are tokenized once per client and padded per batch, never to a fixed length.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fedlease.config.schema import PRECISIONS
from fedlease.data.federation import ClientData, Example
from fedlease.model.lora import AdapterLayout
from fedlease.model.model import FederatedClassifier


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


def autocast_dtype(device: str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device`` (None: no autocast, fp32).

    ``auto`` is bf16 on GPUs that support it, fp16 on older GPUs and fp32 on CPU; fp16 steps
    go through a gradient scaler (see ``LocalTrainer.train``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision = {precision!r}: expected one of {PRECISIONS}")
    cuda = device.startswith("cuda")
    if precision == "auto":
        if not cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("train.precision = 'bf16': this GPU does not support bf16; "
                         "use fp16 or auto")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class LocalTrainer:
    """The local update every task shares: AdamW on the layout's trainable tensors (and the
    head, if any), ``local_epochs`` passes over shuffled mini-batches of the client's data.

    A task says how a batch is built (``batches``) and what its loss is (``loss``)."""

    def __init__(self, model, *, batch_size: int, local_epochs: int, lr: float,
                 weight_decay: float, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.batch_size = batch_size
        self.local_epochs = local_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.autocast_dtype = autocast_dtype

    @property
    def num_train(self) -> int:
        raise NotImplementedError

    @property
    def num_test(self) -> int:
        raise NotImplementedError

    def batches(self, on: str, order: torch.Tensor):
        """``(inputs, targets)`` per mini-batch of split ``on`` ("train"/"test") in ``order``;
        ``inputs`` holds an ``attention_mask``."""
        raise NotImplementedError

    def loss(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def representation_batches(self):
        """The model inputs of every training example, in batches."""
        for inputs, _ in self.batches("train", torch.arange(self.num_train)):
            yield inputs

    def representations(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[batch, hidden]``: one pooled hidden-state vector per example of the batch."""
        raise NotImplementedError

    @torch.no_grad()
    def mean_representation(self) -> torch.Tensor:
        """The mean over this client's training examples of their pooled representation by the
        frozen base model (adapters off, float32): what FedLEASE's ``embedding`` allocation
        clusters clients by."""
        self.model.eval()
        total = torch.zeros(self.model.representation_dim, dtype=torch.float64)
        with self.model.base_only():
            for inputs in self.representation_batches():
                total += self.representations(inputs).double().sum(0).cpu()
        return (total / max(self.num_train, 1)).float()

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.autocast_dtype)

    def train(self, state: dict[str, torch.Tensor], layout: AdapterLayout, seed: int):
        """Local epochs of AdamW on the layout's trainable tensors and the head."""
        torch.manual_seed(seed)  # dropout
        order_gen = torch.Generator().manual_seed(seed)
        self.model.load_state(state, layout)
        self.model.train()
        params = self.model.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        scaler = torch.amp.GradScaler(self.model.device.type,
                                      enabled=self.autocast_dtype == torch.float16)
        total_loss, steps, tokens = 0.0, 0, 0
        start = time.perf_counter()
        for _ in range(self.local_epochs):
            order = torch.randperm(self.num_train, generator=order_gen)
            for inputs, targets in self.batches("train", order):
                loss = self.loss(inputs, targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total_loss += loss.item()
                steps += 1
                tokens += int(inputs["attention_mask"].sum())
        self.model.eval()
        metrics = {
            "train_loss": total_loss / max(steps, 1),
            "train_steps": steps,
            "train_tokens": tokens,
            "train_seconds": time.perf_counter() - start,
            "trainable_params": sum(p.numel() for p in params),
        }
        return self.model.state(), metrics


class ClientTrainer(LocalTrainer):
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
