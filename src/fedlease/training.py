"""The local update every task shares, and the interface of a client's trainer.

A trainer is one client's data (encoded once) over the shared model: state (``dict[str,
Tensor]``) and an ``AdapterLayout`` in, state and metrics out. The algorithms' client side calls
it (``train``, ``evaluate``, ``new_head``, ``mean_representation``, ``num_train``); the simulator
and the Flower ClientApp build one per client through the run's task (``fedlease.tasks``), which
subclasses ``LocalTrainer`` with its batches, loss and evaluation.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod

import torch

from fedlease.config.schema import RunConfig
from fedlease.model.lora import AdapterLayout
from fedlease.model.precision import autocast_dtype


class LocalTrainer(ABC):
    """The local update every task shares: AdamW on the layout's trainable tensors (and the
    head, if any), ``local_epochs`` passes over shuffled mini-batches of the client's data.

    A task's trainer says how its data is counted (``num_train``, ``num_test``), batched
    (``batches``) and represented (``representations``), what its loss is (``loss``), what a
    new client's own head is (``new_head``) and how it is evaluated (``evaluate``).

    ``privacy``: the client's DP setup (``fedlease.privacy.client.ClientPrivacy``) when the run
    has ``[privacy]`` on; ``train`` is then its DP-SGD instead of the step below."""

    privacy = None

    def __init__(self, model, *, batch_size: int, local_epochs: int, lr: float,
                 weight_decay: float, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.batch_size = batch_size
        self.local_epochs = local_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.autocast_dtype = autocast_dtype

    @property
    @abstractmethod
    def num_train(self) -> int:
        """Training examples: the weight of the client's upload in an average."""

    @property
    @abstractmethod
    def num_test(self) -> int:
        """Test examples: the weight of the client's evaluation metrics."""

    @abstractmethod
    def new_head(self, seed: int) -> dict[str, torch.Tensor]:
        """A new client's own (never uploaded) head tensors, seeded; ``{}`` for none."""

    @abstractmethod
    def batches(self, on: str, order: torch.Tensor):
        """``(inputs, targets)`` per mini-batch of split ``on`` ("train"/"test") in ``order``;
        ``inputs`` holds an ``attention_mask``."""

    @abstractmethod
    def loss(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch (under ``autocast``), what ``train`` minimises."""

    @abstractmethod
    def evaluate(self, state: dict[str, torch.Tensor], layout: AdapterLayout,
                 on: str = "test") -> dict[str, float]:
        """The task's metrics (its ``Task.columns`` and ``eval_seconds``) of ``state`` under
        ``layout`` on split ``on`` ("test", or "train")."""

    @torch.no_grad()
    def train_loss(self, state: dict[str, torch.Tensor], layout: AdapterLayout) -> float:
        """The mean loss of ``state`` under ``layout`` over the training split (each batch's
        mean weighted by its size): what IFCA picks a client's cluster by."""
        self.model.load_state(state, layout)
        self.model.eval()
        total = 0.0
        for inputs, targets in self.batches("train", torch.arange(self.num_train)):
            total += float(self.loss(inputs, targets)) * len(targets)
        return total / max(self.num_train, 1)

    def representation_batches(self):
        """The model inputs of every training example, in batches."""
        for inputs, _ in self.batches("train", torch.arange(self.num_train)):
            yield inputs

    @abstractmethod
    def representations(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[batch, hidden]``: one pooled hidden-state vector per example of the batch."""

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

    def train(self, state: dict[str, torch.Tensor], layout: AdapterLayout, seed: int,
              max_steps: int | None = None):
        """Local epochs of AdamW on the layout's trainable tensors and the head; with
        ``max_steps``, exactly that many steps instead (as many passes as they take): a
        newcomer's budget (``Algorithm.newcomer``)."""
        if self.privacy is not None:
            if max_steps is not None:
                raise ValueError("a step budget (a newcomer's adaptation) is not DP-SGD: "
                                 "[privacy] runs have no newcomer protocol")
            return self.privacy.train(self, state, layout, seed)
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
        for inputs, targets in self._steps(order_gen, max_steps):
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

    def _steps(self, order_gen: torch.Generator, max_steps: int | None):
        """The mini-batches of the local update: ``local_epochs`` shuffled passes, or passes
        until ``max_steps`` batches (none for 0)."""
        steps, epoch = 0, 0
        while (epoch < self.local_epochs if max_steps is None else steps < max_steps):
            order = torch.randperm(self.num_train, generator=order_gen)
            for batch in self.batches("train", order):
                if max_steps is not None and steps == max_steps:
                    return
                steps += 1
                yield batch
            epoch += 1


def local_update_options(config: RunConfig) -> dict:
    """``LocalTrainer``'s keyword arguments from the run's config."""
    return {"batch_size": config.train.batch_size, "local_epochs": config.train.local_epochs,
            "lr": config.train.lr, "weight_decay": config.train.weight_decay,
            "autocast_dtype": autocast_dtype(config.train.device, config.train.precision)}
