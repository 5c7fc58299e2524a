"""Instruction generation: a causal LM answers instructions; trained on the answer tokens,
scored by greedy generation with ROUGE-L and exact match.

Same local-update loop as every task (``LocalTrainer``); only the batches and the loss differ.
Each example is encoded once: the prompt (the tokenizer's chat template if it has one, else a
plain Instruction/Input/Response layout) with its *input* cut so the prompt fits ``max_length``
tokens, then the answer tokens and end-of-sequence, at most ``max_new_tokens`` of them. The
model has no head: the LM's own (frozen, shared) output layer answers.
"""

from __future__ import annotations

import functools
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from fedlease.config.schema import DataConfig, ModelConfig, RunConfig
from fedlease.data.instructions import (
    InstructionClientData,
    InstructionExample,
    check_instruction_row,
    load_instruction_federation,
    load_instruction_jsonl,
)
from fedlease.errors import ConfigError
from fedlease.model.causal_lm import (
    FederatedCausalLM,
    default_generation_model_path,
    load_causal_lm,
)
from fedlease.model.lora import AdapterLayout
from fedlease.tasks.base import Task, pretrained_options
from fedlease.training import LocalTrainer, local_update_options

IGNORE = -100  # target of a position the loss skips
INPUT_MARK = "\u241fFEDLEASE-INPUT\u241f"  # where the input goes in a rendered prompt


class GenerationTask(Task):
    """Instruction following with a causal LM, scored with ROUGE-L and exact match."""

    name = "generation"
    metric = "rouge_l"
    columns = ("rouge_l", "exact_match")
    metric_label = "test ROUGE-L"
    defaults = {"model": {"target_modules": ["q_proj", "v_proj"], "max_length": 128}}
    has_head = False
    peft_task_type = "CAUSAL_LM"
    auto_class = "AutoModelForCausalLM"
    model_uses = ("generate",)

    def default_model_path(self) -> str:
        return default_generation_model_path()

    def load_model(self, path: str, config: RunConfig):
        return load_causal_lm(path, config.model.target_modules, config.lora.rank,
                              config.lora.alpha, config.lora.dropout, config.train.device,
                              **pretrained_options(config))

    def longest_input(self, model: ModelConfig) -> tuple[int, str]:
        return (model.max_length + model.max_new_tokens,
                "model.max_length + model.max_new_tokens")

    def load_clients(self, data: DataConfig, seed: int) -> list[InstructionClientData]:
        return load_instruction_federation(data, seed)

    def load_folder(self, folder: Path) -> list[InstructionClientData]:
        return load_instruction_jsonl(folder)

    def trainer(self, config: RunConfig, model, tokenizer,
                client: InstructionClientData) -> GenerationTrainer:
        return GenerationTrainer(model, tokenizer, client, max_length=config.model.max_length,
                                 max_new_tokens=config.model.max_new_tokens,
                                 **local_update_options(config))

    def client_data(self, client_id: str, task: str, labels: list[str],
                    examples: list[InstructionExample]) -> InstructionClientData:
        return InstructionClientData(client_id, task, [], list(examples))

    def records(self, trainer: GenerationTrainer, expected: list) -> list[dict]:
        """``{"answer": text}`` (+ the expected answer)."""
        return [{"answer": a} if e is None else {"answer": a, "expected": e}
                for a, e in zip(trainer.answers(), expected, strict=True)]

    def score(self, records: list[dict]) -> dict[str, float]:
        return scores([(r["expected"], r["answer"]) for r in records])

    def text_example(self, text: str) -> InstructionExample:
        return InstructionExample(text, "", "")

    def check_input_row(self, where: str, row: dict) -> None:
        check_instruction_row(where, row, output_required=False)

    def input_examples(self, rows: list[tuple[str, dict]], labels: list[str],
                       client_id: str) -> tuple[list[InstructionExample], list[str | None]]:
        return ([InstructionExample(r["instruction"], r.get("input", ""), r.get("output", ""))
                 for _, r in rows], [r.get("output") for _, r in rows])

    def expected(self, example: InstructionExample) -> str:
        return example.output


def prompt_text(tokenizer, instruction: str, input_text: str) -> str:
    if tokenizer.chat_template:
        content = instruction + ("\n\n" + input_text if input_text else "")
        return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                             tokenize=False, add_generation_prompt=True)
    if input_text:
        return f"### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
    return f"### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass
class EncodedExample:
    prompt: list[int]
    answer: list[int]  # answer tokens, then end-of-sequence (unless cut)
    reference: str


def encode(tokenizer, example: InstructionExample, max_length: int,
           max_new_tokens: int) -> EncodedExample:
    """Token ids of the prompt (its input cut to fit ``max_length``) and of the answer."""
    rendered = prompt_text(tokenizer, example.instruction, INPUT_MARK if example.input else "")
    before, _, after = rendered.partition(INPUT_MARK)
    before_ids = tokenizer(before, add_special_tokens=not tokenizer.chat_template)["input_ids"]
    after_ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    room = max_length - len(before_ids) - len(after_ids)
    if room < (1 if example.input else 0):
        raise ConfigError(
            f"model.max_length = {max_length} tokens leaves no room for the input: the prompt "
            f"around it takes {len(before_ids) + len(after_ids)} tokens (instruction "
            f"{example.instruction[:60]!r}); raise model.max_length")
    input_ids = tokenizer(example.input, add_special_tokens=False)["input_ids"][:room] \
        if example.input else []
    answer = tokenizer(example.output, add_special_tokens=False)["input_ids"]
    answer = (answer + [tokenizer.eos_token_id])[:max_new_tokens]
    return EncodedExample(before_ids + input_ids + after_ids, answer, example.output)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, single spaces: what exact match compares."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure (the ``rouge-score`` package, no stemming)."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def scores(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Mean ROUGE-L and exact match of ``(reference, answer)`` pairs."""
    n = max(len(pairs), 1)
    return {"rouge_l": sum(rouge_l(r, a) for r, a in pairs) / n,
            "exact_match": sum(normalize_answer(r) == normalize_answer(a) for r, a in pairs) / n}


class GenerationTrainer(LocalTrainer):
    """One client's instruction data, encoded once, and the shared causal LM it trains on."""

    def __init__(self, model: FederatedCausalLM, tokenizer, data: InstructionClientData, *,
                 max_length: int, max_new_tokens: int, batch_size: int, local_epochs: int,
                 lr: float, weight_decay: float, autocast_dtype: torch.dtype | None = None):
        super().__init__(model, batch_size=batch_size, local_epochs=local_epochs, lr=lr,
                         weight_decay=weight_decay, autocast_dtype=autocast_dtype)
        if tokenizer.eos_token_id is None:
            raise ConfigError("model.path: the generation model's tokenizer has no "
                              "end-of-sequence token; expected a causal LM with one")
        self.data = data
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else self.eos_id
        self.max_new_tokens = max_new_tokens
        self.splits = {
            on: [encode(tokenizer, ex, max_length, max_new_tokens) for ex in examples]
            for on, examples in (("train", data.train), ("test", data.test))
        }

    @property
    def num_train(self) -> int:
        return len(self.splits["train"])

    @property
    def num_test(self) -> int:
        return len(self.splits["test"])

    def new_head(self, seed: int) -> dict[str, torch.Tensor]:
        """No head: the LM's own (frozen, shared) output layer answers."""
        return {}

    def collate(self, items: list[EncodedExample], with_answer: bool):
        """Left-padded ``input_ids``/``attention_mask`` of prompt (+ answer) per row, and the
        answer ids right-aligned under the last positions (``IGNORE`` elsewhere)."""
        rows = [it.prompt + (it.answer if with_answer else []) for it in items]
        width = max(len(r) for r in rows)
        answer_width = max(len(it.answer) for it in items)
        ids = [[self.pad_id] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        targets = [[IGNORE] * (answer_width - len(it.answer)) + it.answer for it in items]
        device = self.model.device
        inputs = {"input_ids": torch.tensor(ids, device=device),
                  "attention_mask": torch.tensor(mask, device=device)}
        return inputs, torch.tensor(targets, device=device)

    def batches(self, on: str, order: torch.Tensor):
        split = self.splits[on]
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size].tolist()
            yield self.collate([split[i] for i in idx], with_answer=True)

    def representation_batches(self):
        """The training prompts without their answers: a client's representation is of what
        it is asked, not of what it answers."""
        split = self.splits["train"]
        for start in range(0, len(split), self.batch_size):
            yield self.collate(split[start : start + self.batch_size], with_answer=False)[0]

    def representations(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.prompt_representation(**inputs)

    def loss(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """The mean over the batch of each example's own mean cross-entropy over its answer
        tokens. (Not one mean over all the batch's tokens: an example's weight would then
        depend on its batch-mates' answer lengths, and under DP-SGD its per-example gradient
        would not be bounded by the clipping norm.)"""
        with self.autocast():
            logits = self.model.answer_logits(**inputs, answer_len=targets.shape[1]).float()
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                    ignore_index=IGNORE, reduction="none").view_as(targets)
        answered = (targets != IGNORE).sum(1).clamp(min=1)
        return (per_token.sum(1) / answered).mean()

    def predict(self, items: list[EncodedExample]) -> list[str]:
        """Greedy answers to the prompts of ``items``."""
        inputs, _ = self.collate(items, with_answer=False)
        with self.autocast():
            new = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      eos_id=self.eos_id, pad_id=self.pad_id)
        return [text.strip() for text in self.tokenizer.batch_decode(new,
                                                                     skip_special_tokens=True)]

    @torch.no_grad()
    def answers(self, on: str = "test") -> list[str]:
        """Greedy answers to the prompts of split ``on`` (under the loaded state)."""
        split = self.splits[on]
        return [answer for first in range(0, len(split), self.batch_size)
                for answer in self.predict(split[first : first + self.batch_size])]

    @torch.no_grad()
    def evaluate(self, state: dict[str, torch.Tensor], layout: AdapterLayout,
                 on: str = "test") -> dict[str, float]:
        """ROUGE-L and exact match of greedy answers. (No teacher-forced loss: it would cost
        another forward pass per example, and ``train_loss`` already tracks the fit.)"""
        self.model.load_state(state, layout)
        self.model.eval()
        start = time.perf_counter()
        answers = self.answers(on)
        pairs = list(zip([it.reference for it in self.splits[on]], answers, strict=True))
        return {**scores(pairs), "eval_seconds": time.perf_counter() - start}
