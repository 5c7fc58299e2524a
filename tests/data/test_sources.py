import json
from pathlib import Path

import pytest

from fedlease.config import DataConfig
from fedlease.data.federation import DataError, Example, split_task
from fedlease.data.sources import load_builtin, load_glue, load_jsonl_folder

GLUE = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"


def test_split_is_label_balanced_and_disjoint():
    pool = [Example(f"t{i}", i % 3) for i in range(300)]
    clients = split_task("t", ["a", "b", "c"], pool, 4, train_per_client=9, test_per_client=6,
                         seed=1)
    seen = set()
    for c in clients:
        for part, n in ((c.train, 9), (c.test, 6)):
            assert len(part) == n
            assert sorted(ex.label for ex in part) == sorted([0, 1, 2] * (n // 3))
            texts = {ex.text for ex in part}
            assert not texts & seen
            seen |= texts


def test_split_too_small_pool_names_task_and_label():
    pool = [Example(f"t{i}", 0) for i in range(5)] + [Example("x", 1)]
    with pytest.raises(DataError, match="task 'tiny': label 'b' has 1 examples"):
        split_task("tiny", ["a", "b"], pool, 2, 2, 2, seed=0)


def test_builtin_federation_has_four_tasks_of_four_clients():
    clients = load_builtin(DataConfig(), seed=0)
    assert len(clients) == 16
    assert {c.task for c in clients} == {"sentiment", "news", "spam", "uncertainty"}
    news = next(c for c in clients if c.task == "news")
    assert news.num_labels == 5


@pytest.mark.skipif(not GLUE.exists(), reason="../shared/data/glue not present")
def test_glue_layout_is_read_with_pairs():
    data = DataConfig(source="glue", path=str(GLUE), tasks=["SST-2", "QNLI", "MRPC", "QQP"],
                      clients_per_task=2, train_per_client=20, test_per_client=10)
    clients = load_glue(data, seed=0)
    assert len(clients) == 8
    qnli = next(c for c in clients if c.task == "QNLI")
    assert all(ex.text_pair for ex in qnli.train)
    assert qnli.labels == ["entailment", "not_entailment"]


def test_jsonl_folder_with_manifest(tiny_federation):
    clients = load_jsonl_folder(tiny_federation)
    assert {c.client_id: c.task for c in clients}["animals-1"] == "animals"
    c = clients[0]
    assert len(c.train) == 24 and len(c.test) == 8 and c.num_labels == 2


def test_jsonl_per_client_folders_and_pairs(tmp_path):
    client = tmp_path / "bank-a"
    client.mkdir()
    row = {"text": "is it?", "text_pair": "it is.", "label": "yes"}
    (client / "train.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(
        {**row, "label": "no"}) + "\n")
    (client / "test.jsonl").write_text(json.dumps(row) + "\n")
    (c,) = load_jsonl_folder(tmp_path)
    assert c.task == "bank-a" and c.labels == ["no", "yes"]
    assert c.train[0].text_pair == "it is."


@pytest.mark.parametrize("line,message", [
    ("{not json", "not valid JSON"),
    ('{"text": "", "label": "a", "split": "train"}', '"text" must be a non-empty string'),
    ('{"text": "x", "split": "train"}', '"label" must be a string or an integer'),
    ('{"text": "x", "label": "a"}', '"split" must be'),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"text": "fine", "label": "a", "split": "train"})
    (tmp_path / "c1.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=message) as err:
        load_jsonl_folder(tmp_path)
    assert "c1.jsonl:2" in str(err.value)


def test_client_without_test_examples_is_named(tmp_path):
    (tmp_path / "lonely.jsonl").write_text(
        json.dumps({"text": "x", "label": "a", "split": "train"}) + "\n")
    with pytest.raises(DataError, match="client 'lonely'.*no test examples"):
        load_jsonl_folder(tmp_path)
