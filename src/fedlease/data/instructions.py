"""Instruction data for generation: ``{"instruction", "input", "output"}`` examples per client.

Four ways in:

* a classification federation (the built-in tasks or GLUE) turned into instructions, one
  template per task, the label's word as the short answer; clients, balance and disjoint splits
  are those of the classification loaders (``split_task``);
* a folder of per-client JSONL files the user brings (same layout as the classification JSONL
  folder, see ``load_jsonl_folder``), lines ``{"instruction", "input", "output"}``;
* local tables (``data.source = "datasets"``), each partitioned into clients
  (``partition_datasets``), with instruction / input / output columns;
* the built-in instruction tasks (``data.source = "instructions"``): FLAN-style generation
  tasks with free-text answers (headlines, subject lines, spelling fixes, labels with their
  reasons), shipped as package data (DATA.md section 4).
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedlease.data.client_data import ClientData, Example
from fedlease.data.sources import builtin_dir, load_source_clients, read_jsonl_clients
from fedlease.data.tables import columns, partition_datasets, text_value
from fedlease.errors import DataError
from fedlease.registry import Registry

if TYPE_CHECKING:  # annotations only: config validation imports this package
    from fedlease.config.schema import DataConfig, DatasetConfig


@dataclass(frozen=True)
class InstructionExample:
    instruction: str
    input: str  # may be ""
    output: str


@dataclass
class InstructionClientData:
    client_id: str
    task: str
    train: list[InstructionExample]
    test: list[InstructionExample]


@dataclass(frozen=True)
class Template:
    """How a classification task reads as an instruction."""

    instruction: str
    answers: tuple[str, ...] | None = None  # answer per label index; None: the label names
    pair_format: str = "{text}\n{pair}"  # the input of a two-text example

    def apply(self, example: Example, labels: list[str]) -> InstructionExample:
        answers = self.answers or tuple(labels)
        text = (example.text if example.text_pair is None
                else self.pair_format.format(text=example.text, pair=example.text_pair))
        return InstructionExample(self.instruction, text, answers[example.label])


TEMPLATES = {
    # built-in tasks (labels are the answers; see DATA.md)
    "sentiment": Template("Is the sentiment of this movie review negative or positive?"),
    "news": Template("Which topic is this news article about: business, entertainment, "
                     "politics, sports or tech?"),
    "spam": Template("Is this message spam or ham (a normal message)?"),
    "uncertainty": Template("Does this sentence state something as certain or as uncertain?"),
    # GLUE tasks (label order as in ``GLUE_COLUMNS``)
    "SST-2": Template("Is the sentiment of this sentence negative or positive?",
                      ("negative", "positive")),
    "QNLI": Template("Does the sentence answer the question? Answer yes or no.", ("yes", "no"),
                     "Question: {text}\nSentence: {pair}"),
    "MRPC": Template("Do the two sentences mean the same thing? Answer yes or no.",
                     ("no", "yes"), "Sentence 1: {text}\nSentence 2: {pair}"),
    "QQP": Template("Do the two questions ask the same thing? Answer yes or no.", ("no", "yes"),
                    "Question 1: {text}\nQuestion 2: {pair}"),
}


def to_instructions(client: ClientData) -> InstructionClientData:
    template = TEMPLATES.get(client.task)
    if template is None:
        raise DataError(f"task {client.task!r} (client {client.client_id!r}) has no instruction "
                        f"template; tasks with one: {sorted(TEMPLATES)}")
    if template.answers is not None and len(template.answers) != client.num_labels:
        raise DataError(f"task {client.task!r}: the template has {len(template.answers)} "
                        f"answers for {client.num_labels} labels {client.labels}")
    return InstructionClientData(
        client.client_id, client.task,
        [template.apply(ex, client.labels) for ex in client.train],
        [template.apply(ex, client.labels) for ex in client.test],
    )


def load_instruction_federation(data: DataConfig, seed: int) -> list[InstructionClientData]:
    """The user's instruction data (JSONL folder, partitioned tables) as it is; the built-in and
    GLUE classification federations turned into instructions."""
    if data.source in INSTRUCTION_SOURCES:
        return INSTRUCTION_SOURCES[data.source](data, seed)
    return [to_instructions(c) for c in load_source_clients(data, seed)]


def read_instruction_table(dataset: DatasetConfig, table, where: str):
    """A table's ``instruction``, ``input`` (unless ``input = ""``) and ``output`` columns as
    examples (the ``read`` of ``partition_datasets``); there are no labels."""
    if dataset.input and dataset.input not in table.column_names:
        raise DataError(f"{where}: no column {dataset.input!r} (data.datasets.input); the "
                        f"file's columns are {table.column_names}; set input = \"\" if the "
                        "examples have no input")
    fields = ("instruction", "output") + (("input",) if dataset.input else ())
    instructions, outputs, *inputs = columns(table, dataset, fields, where)
    examples = [InstructionExample(
        text_value(instruction, dataset.instruction, row, where),
        "" if not inputs or inputs[0][row] is None
        else text_value(inputs[0][row], dataset.input, row, where, allow_empty=True),
        text_value(output, dataset.output, row, where))
        for row, (instruction, output) in enumerate(zip(instructions, outputs, strict=True))]
    return examples, None, None


def load_instruction_datasets(data: DataConfig, seed: int) -> list[InstructionClientData]:
    """``data.source = "datasets"`` for generation: each table partitioned into clients."""
    return partition_datasets(
        data, seed, read_instruction_table,
        lambda cid, task, _labels, train, test: InstructionClientData(cid, task, train, test))


def check_instruction_row(where: str, row: dict, output_required: bool = True) -> None:
    """``output_required = False``: prompts to answer, whose output may be missing."""
    for key in ("instruction", "output"):
        if key == "output" and not output_required and key not in row:
            continue
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise DataError(f"{where}: \"{key}\" must be a non-empty string")
    if not isinstance(row.get("input", ""), str):
        raise DataError(f"{where}: \"input\" must be a string (or left out)")


def load_instruction_jsonl(folder: Path) -> list[InstructionClientData]:
    """Per-client JSONL files of ``{"instruction", "input", "output"}`` lines (``input`` may be
    empty or missing); folder layout, tasks and splits as in ``load_jsonl_folder``."""
    def examples(rows):
        return [InstructionExample(r["instruction"], r.get("input", ""), r["output"])
                for _, r in rows]

    clients, _labels = read_jsonl_clients(folder, check_instruction_row)
    return [InstructionClientData(name, task, examples(splits["train"]), examples(splits["test"]))
            for name, task, splits in clients]


def builtin_instruction_tasks() -> dict[str, dict]:
    """The manifest's tasks of the built-in instruction sample: name -> file, source, licence."""
    return json.loads((builtin_dir() / "instructions" / "manifest.json").read_text())["tasks"]


def deal_examples(task: str, pool: list[InstructionExample], data: DataConfig,
                  seed: int) -> list[InstructionClientData]:
    """``data.clients_per_task`` clients of one task with disjoint train / test splits, drawn
    from the pool shuffled with ``seed`` (as ``split_task`` does for labelled examples)."""
    size = data.train_per_client + data.test_per_client
    need = data.clients_per_task * size
    if len(pool) < need:
        raise DataError(f"task {task!r}: {len(pool)} examples, but {data.clients_per_task} "
                        f"clients x ({data.train_per_client} train + {data.test_per_client} "
                        f"test) need {need}; lower data.train_per_client / test_per_client / "
                        "clients_per_task")
    shuffled = list(pool)
    random.Random(f"{seed}:{task}").shuffle(shuffled)
    clients = []
    for i in range(data.clients_per_task):
        mine = shuffled[i * size:(i + 1) * size]
        clients.append(InstructionClientData(f"{task}-{i}", task, mine[:data.train_per_client],
                                             mine[data.train_per_client:]))
    return clients


def load_builtin_instructions(data: DataConfig, seed: int) -> list[InstructionClientData]:
    """``data.source = "instructions"``: ``data.clients_per_task`` clients per task of
    ``data.tasks``, each with examples no other client has."""
    manifest = builtin_instruction_tasks()
    unknown = [t for t in data.tasks if t not in manifest]
    if unknown:
        raise DataError(f"data.tasks: {unknown} are not built-in instruction tasks "
                        f"(data.source = 'instructions'); expected some of {sorted(manifest)}")
    clients = []
    for task in data.tasks:
        path = builtin_dir() / "instructions" / manifest[task]["file"]
        with gzip.open(path, "rt", encoding="utf-8") as f:
            pool = [InstructionExample(**json.loads(line)) for line in f]
        clients += deal_examples(task, pool, data, seed)
    return clients


# data.source -> loader of instruction clients; other sources are classification federations
# turned into instructions (``to_instructions``)
INSTRUCTION_SOURCES: Registry[Callable] = Registry("data.source", {
    "instructions": load_builtin_instructions,
    "jsonl": lambda data, seed: load_instruction_jsonl(Path(data.path)),
    "datasets": load_instruction_datasets,
})
