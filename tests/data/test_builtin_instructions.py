"""The built-in instruction tasks (data.source = "instructions"): the shipped files
(src/fedlease/data/builtin/instructions, made by scripts/build_instruction_data.py) and the
clients the loader deals out of them."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from fedlease.config import DataConfig
from fedlease.data.instructions import (
    builtin_instruction_tasks,
    load_builtin_instructions,
    load_instruction_federation,
)
from fedlease.data.sources import load_source_clients
from fedlease.errors import DataError

FOLDER = Path(__file__).resolve().parents[2] / "src/fedlease/data/builtin/instructions"
TASKS = ("headline", "sentiment_reason", "spelling", "subject")
PER_TASK = 800


def rows(task: str) -> list[dict]:
    with gzip.open(FOLDER / f"{task}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_manifest_lists_every_task_with_its_source_and_licence():
    manifest = json.loads((FOLDER / "manifest.json").read_text())
    assert sorted(manifest["tasks"]) == list(TASKS)
    for task, entry in manifest["tasks"].items():
        assert entry["file"] == f"{task}.jsonl.gz" and entry["num_examples"] == PER_TASK
        assert entry["source"] and entry["license"] and entry["instruction"]


@pytest.mark.parametrize("task", TASKS)
def test_shipped_rows_are_complete_short_and_unique(task):
    examples = rows(task)
    assert len(examples) == PER_TASK
    instruction = builtin_instruction_tasks()[task]["instruction"]
    for ex in examples:
        assert set(ex) == {"instruction", "input", "output"}
        assert ex["instruction"] == instruction
        assert ex["input"].strip() and ex["output"].strip()
        assert len(ex["input"]) <= 400 and " ".join(ex["input"].split()) == ex["input"]
        assert task != "spelling" or len(ex["output"]) <= 160  # the answer is the sentence
        assert "\ufffd" not in ex["input"] + ex["output"]
    assert len({ex["input"].casefold() for ex in examples}) == PER_TASK
    with open(FOLDER / f"{task}.jsonl.gz", "rb") as f:
        assert f.read(8)[4:8] == b"\0\0\0\0"  # gzip mtime 0: rebuilds are byte-identical


@pytest.mark.parametrize("task", ["headline", "subject"])
def test_free_text_answers_are_unique_and_not_a_reply_prefix(task):
    outputs = [ex["output"] for ex in rows(task)]
    assert len({o.casefold() for o in outputs}) == PER_TASK
    assert not any(re.match(r"(re|fwd?)\s*:", o, re.I) or re.search(r"\[|https?:", o)
                   for o in outputs)


def test_spelling_inputs_differ_from_the_answer_in_one_to_three_words():
    for ex in rows("spelling"):
        wrong, right = ex["input"].split(), ex["output"].split()
        assert len(wrong) == len(right)  # a word is replaced by a misspelling, nothing else
        assert 1 <= sum(a != b for a, b in zip(wrong, right, strict=True)) <= 3


def test_sentiment_reasons_name_words_of_the_review():
    for ex in rows("sentiment_reason"):
        label, words = ex["output"].split(": ", 1)
        assert label in ("negative", "positive")
        review = re.findall(r"[a-z]+(?:'[a-z]+)?", ex["input"].lower())
        assert 1 <= len(words.split(", ")) <= 3
        assert all(w in review for w in words.split(", "))


def test_loader_deals_disjoint_clients_per_task():
    data = DataConfig(source="instructions", tasks=list(TASKS), clients_per_task=3,
                      train_per_client=20, test_per_client=6)
    clients = load_instruction_federation(data, seed=0)
    assert [c.client_id for c in clients] == [f"{t}-{i}" for t in TASKS for i in range(3)]
    assert all(len(c.train) == 20 and len(c.test) == 6 for c in clients)
    inputs = [ex.input for c in clients for ex in c.train + c.test]
    assert len(inputs) == len(set(inputs))  # no example in two clients or two splits
    again = load_builtin_instructions(data, seed=0)
    assert [c.train for c in again] == [c.train for c in clients]
    other = load_builtin_instructions(data, seed=1)
    assert [c.train for c in other] != [c.train for c in clients]


def test_unknown_task_and_too_many_clients_are_named():
    with pytest.raises(DataError, match=r"data.tasks: \['news'\] are not built-in instruction"):
        load_builtin_instructions(DataConfig(source="instructions", tasks=["news"]), seed=0)
    big = DataConfig(source="instructions", tasks=["subject"], clients_per_task=8,
                     train_per_client=100, test_per_client=10)
    with pytest.raises(DataError, match="task 'subject': 800 examples, but 8 clients"):
        load_builtin_instructions(big, seed=0)


def test_classification_on_instruction_tasks_is_refused():
    with pytest.raises(DataError, match="set model.task = \"generation\""):
        load_source_clients(DataConfig(source="instructions", tasks=["headline"]), seed=0)
