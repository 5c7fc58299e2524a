"""The local update every task shares, and the interface of a client's trainer.

A trainer is one client's data (encoded once) over the shared model: state (``dict[str,
Tensor]``) and an ``AdapterLayout`` in, state and metrics out. The algorithms' client side calls
it (``train``, ``evaluate``, ``new_head``, ``embedding``, ``num_train``); the simulator
and the Flower ClientApp build one per client through the run's task (``fedlease.tasks``), which
subclasses ``LocalTrainer`` with its batches, loss and evaluation.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from fedlease.config.schema import RunConfig
from fedlease.model.lora import AdapterLayout
from fedlease.model.precision import autocast_dtype

# a term an algorithm adds to the task's loss at every local step: a function of the trainable
# tensors by name and of their values when the local update began (FedProx's proximal term)
LocalLoss = Callable[[dict[str, torch.nn.Parameter], dict[str, torch.Tensor]], torch.Tensor]


class LocalTrainer(ABC):
    """The local update every task shares: AdamW on the layout's trainable tensors (and the
    head, if any), ``local_epochs`` passes over shuffled mini-batches of the client's data.

    A task's trainer says how its data is counted (``num_train``, ``num_test``), batched
    (``batches``) and represented (``representations``), what its loss is (``loss``), what a
    new client's own head is (``new_head``) and how it is evaluated (``evaluate``).

    ``privacy``: the client's DP setup (``fedlease.privacy.client.ClientPrivacy``) when the run
    has ``[privacy]`` on; ``train``'s update rule is then its DP-SGD instead of
    ``PlainUpdate``, and ``embedding`` its DP vector."""

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

    def embedding(self, seed: int, noise: float = 0.0) -> torch.Tensor:
        """The allocation vector this client uploads, unit length: under ``[privacy]`` its DP
        mechanism's (calibrated noise, released once per run), else its mean representation
        plus Gaussian noise of std ``noise`` per coordinate (``federation.embedding_noise``),
        seeded. The one place the vector is made: what an attack or a mechanism wraps."""
        if self.privacy is not None:
            vector = self.privacy.embedding(self, seed)
            return vector / vector.norm().clamp(min=1e-12)
        vector = self.mean_representation()
        vector = vector / vector.norm().clamp(min=1e-12)
        if noise > 0:
            gen = torch.Generator().manual_seed(seed)
            vector = vector + noise * torch.randn(vector.shape, generator=gen)
        return vector

    def update_rule(self, state: dict[str, torch.Tensor], seed: int,
                    max_steps: int | None = None):
        """How ``train`` steps: the client's DP-SGD under ``[privacy]``, else ``PlainUpdate``."""
        if self.privacy is not None:
            return self.privacy.update_rule(self, state, seed)
        return PlainUpdate(self, seed, max_steps)

    def train(self, state: dict[str, torch.Tensor], layout: AdapterLayout, seed: int,
              local_loss: LocalLoss | None = None, max_steps: int | None = None):
        """One local update of the layout's trainable tensors and the head: the one loop, its
        steps and their optimiser the update rule's (``update_rule``); ``local_loss`` (an
        algorithm's, ``AlgorithmClient.local_loss``) is added to every step's loss; with
        ``max_steps``, exactly that many steps (a newcomer's budget, ``Algorithm.newcomer``)."""
        if self.privacy is not None and local_loss is not None:
            raise ValueError("an algorithm with a local loss term cannot run with [privacy] on "
                             "(DP-SGD clips per-example gradients of the task's loss alone)")
        if self.privacy is not None and max_steps is not None:
            raise ValueError("a step budget (a newcomer's adaptation) is not DP-SGD: "
                             "[privacy] runs have no newcomer protocol")
        # DP: the rule refuses a round past the budget, before any work
        rule = self.update_rule(state, seed, max_steps)
        torch.manual_seed(seed)  # dropout
        self.model.load_state(state, layout)
        self.model.train()
        params = self.model.trainable_parameters()
        named = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        begun = {name: p.detach().clone() for name, p in named.items()} if local_loss else {}
        start = time.perf_counter()
        with rule.attached(self.model, params):
            for chunks in rule.steps():  # one optimiser step per item (DP: a Poisson sample)
                rule.zero_grad()
                for inputs, targets in chunks:
                    loss = self.loss(inputs, targets)
                    if local_loss is not None:
                        loss = loss + local_loss(named, begun)
                    rule.backward(loss, inputs)
                rule.step()
        self.model.eval()
        extra_state, metrics = rule.finish()
        metrics.update(train_seconds=time.perf_counter() - start,
                       trainable_params=sum(p.numel() for p in params))
        return {**self.model.state(), **extra_state}, metrics


class PlainUpdate:
    """The non-private update rule: AdamW over ``local_epochs`` shuffled passes of
    mini-batches (fp16: through a gradient scaler, as fp16 gradients underflow without loss
    scaling; bf16 and fp32 need none); reports the mean training loss and the tokens seen."""

    def __init__(self, trainer: LocalTrainer, seed: int, max_steps: int | None = None):
        self.trainer = trainer
        self.order_gen = torch.Generator().manual_seed(seed)
        self.max_steps = max_steps
        self.total_loss, self.steps_done, self.tokens = 0.0, 0, 0

    @contextlib.contextmanager
    def attached(self, model, params):
        trainer = self.trainer
        self.optimizer = torch.optim.AdamW(params, lr=trainer.lr,
                                           weight_decay=trainer.weight_decay)
        self.scaler = torch.amp.GradScaler(model.device.type,
                                           enabled=trainer.autocast_dtype == torch.float16)
        yield

    def steps(self):
        """``local_epochs`` shuffled passes of mini-batches, or passes until ``max_steps``
        batches (none for 0)."""
        steps, epoch, budget = 0, 0, self.max_steps
        while (epoch < self.trainer.local_epochs if budget is None else steps < budget):
            order = torch.randperm(self.trainer.num_train, generator=self.order_gen)
            for batch in self.trainer.batches("train", order):
                if budget is not None and steps == budget:
                    return
                steps += 1
                yield [batch]
            epoch += 1

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
        self.scaler.scale(loss).backward()
        self.total_loss += loss.item()
        self.tokens += int(inputs["attention_mask"].sum())

    def step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.steps_done += 1

    def finish(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {}, {"train_loss": self.total_loss / max(self.steps_done, 1),
                    "train_steps": self.steps_done, "train_tokens": self.tokens}


def local_update_options(config: RunConfig) -> dict:
    """``LocalTrainer``'s keyword arguments from the run's config."""
    return {"batch_size": config.train.batch_size, "local_epochs": config.train.local_epochs,
            "lr": config.train.lr, "weight_decay": config.train.weight_decay,
            "autocast_dtype": autocast_dtype(config.train.device, config.train.precision)}
