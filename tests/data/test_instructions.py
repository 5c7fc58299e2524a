import json
from collections import Counter
from pathlib import Path

import pytest

from fedlease.config import DataConfig
from fedlease.data.client_data import ClientData, Example
from fedlease.data.instructions import (
    TEMPLATES,
    load_instruction_federation,
    load_instruction_jsonl,
    to_instructions,
)
from fedlease.errors import DataError

GLUE = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"


def test_builtin_instruction_federation_answers_with_label_words():
    data = DataConfig(tasks=["sentiment", "news"], clients_per_task=3, train_per_client=10,
                      test_per_client=5)
    clients = load_instruction_federation(data, seed=0)
    assert [c.client_id for c in clients] == [f"{t}-{i}" for t in ("sentiment", "news")
                                              for i in range(3)]
    news = ["business", "entertainment", "politics", "sports", "tech"]
    for c in clients:
        answers = news if c.task == "news" else ["negative", "positive"]
        assert len(c.train) == 10 and len(c.test) == 5
        # label-balanced: every answer word equally often
        counts = Counter(ex.output for ex in c.train)
        assert sorted(counts) == answers and set(counts.values()) == {10 // len(answers)}
        assert all(ex.instruction == TEMPLATES[c.task].instruction and ex.input
                   for ex in c.train + c.test)
    inputs = [ex.input for c in clients for ex in c.train + c.test]
    assert len(inputs) == len(set(inputs))  # disjoint across clients and splits


def test_pair_examples_use_the_task_pair_format_and_answers():
    client = ClientData("q-0", "QNLI", ["entailment", "not_entailment"],
                        [Example("Who?", 1, "Nobody knows.")], [Example("When?", 0, "In 1990.")])
    out = to_instructions(client)
    assert out.train[0].input == "Question: Who?\nSentence: Nobody knows."
    assert (out.train[0].output, out.test[0].output) == ("no", "yes")


def test_task_without_template_is_named():
    client = ClientData("x-0", "mystery", ["a", "b"], [Example("t", 0)], [Example("u", 1)])
    with pytest.raises(DataError, match="task 'mystery' \\(client 'x-0'\\) has no instruction"):
        to_instructions(client)


@pytest.mark.skipif(not GLUE.exists(), reason="../shared/data/glue not present")
def test_glue_tasks_become_yes_no_and_sentiment_instructions():
    data = DataConfig(source="glue", path=str(GLUE), tasks=["SST-2", "QNLI", "MRPC", "QQP"],
                      clients_per_task=1, train_per_client=4, test_per_client=2)
    clients = load_instruction_federation(data, seed=0)
    outputs = {c.task: sorted({ex.output for ex in c.train}) for c in clients}
    assert outputs == {"SST-2": ["negative", "positive"], "QNLI": ["no", "yes"],
                       "MRPC": ["no", "yes"], "QQP": ["no", "yes"]}


def test_jsonl_instructions_with_folders_and_optional_input(tmp_path):
    rows = {"train": [{"instruction": "Say hi.", "output": "hi"},
                      {"instruction": "Echo.", "input": "x", "output": "x"}],
            "test": [{"instruction": "Say hi.", "input": "", "output": "hi"}]}
    for split, lines in rows.items():
        (tmp_path / "alice").mkdir(exist_ok=True)
        (tmp_path / "alice" / f"{split}.jsonl").write_text(
            "\n".join(json.dumps(r | {"task": "chat"}) for r in lines))
    (client,) = load_instruction_jsonl(tmp_path)
    assert (client.client_id, client.task) == ("alice", "chat")
    assert [(ex.input, ex.output) for ex in client.train] == [("", "hi"), ("x", "x")]
    assert client.test[0].instruction == "Say hi."


@pytest.mark.parametrize("row,message", [
    ({"input": "x", "output": "y", "split": "train"}, '"instruction" must be a non-empty'),
    ({"instruction": "i", "output": " ", "split": "train"}, '"output" must be a non-empty'),
    ({"instruction": "i", "input": 3, "output": "y", "split": "train"}, '"input" must be'),
    ({"instruction": "i", "output": "y"}, '"split" must be'),
])
def test_bad_instruction_lines_are_named(tmp_path, row, message):
    (tmp_path / "bob.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"bob.jsonl:1: {message}"):
        load_instruction_jsonl(tmp_path)
