import json
from pathlib import Path

import pytest

from fedlease.config import DataConfig
from fedlease.data.client_data import Example, split_task
from fedlease.data.sources import load_builtin, load_glue, load_jsonl_folder
from fedlease.errors import DataError

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


def test_empty_client_file_is_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"client 'empty': .*empty.jsonl hold no examples"):
        load_jsonl_folder(tmp_path)


def test_client_without_test_examples_is_named(tmp_path):
    (tmp_path / "lonely.jsonl").write_text("".join(
        json.dumps({"text": "x", "label": label, "split": "train"}) + "\n" for label in "ab"))
    with pytest.raises(DataError, match="client 'lonely'.*no test examples"):
        load_jsonl_folder(tmp_path)


def write_client(folder, name, labels, split="train"):
    lines = [json.dumps({"text": f"text {i}", "label": lab, "split": split})
             for i, lab in enumerate(labels)]
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def test_manifest_labels_fix_order_and_reject_other_labels(tmp_path):
    write_client(tmp_path, "a", ["pos", "neg"])
    with (tmp_path / "a.jsonl").open("a") as f:
        f.write(json.dumps({"text": "t", "label": "pos", "split": "test"}) + "\n")
    manifest = {"clients": {"a": "sent"}, "labels": {"sent": ["pos", "neg", "neutral"]}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (client,) = load_jsonl_folder(tmp_path)
    assert client.labels == ["pos", "neg", "neutral"] and client.train[1].label == 1
    write_client(tmp_path, "a", ["pos", "meh"])
    with (tmp_path / "a.jsonl").open("a") as f:
        f.write(json.dumps({"text": "t", "label": "pos", "split": "test"}) + "\n")
    with pytest.raises(DataError, match=r"a.jsonl:2: label 'meh' is not one of the labels "
                                        r"manifest.json declares for task 'sent'"):
        load_jsonl_folder(tmp_path)


@pytest.mark.parametrize("manifest,message", [
    ("{oops", "not readable JSON"),
    ('{"clients": {"a": 3}}', '"clients" must map client names to task names'),
    ('{"clients": {}, "labels": {"t": ["only"]}}', "labels of task 't'"),
    ('{"clients": {}, "labels": {"t": ["x", "x"]}}', "at least 2 distinct"),
    ('{"clients": {}, "extra": 1}', "expected"),
    ('{"clients": {"ghost": "t"}}', r"clients \['ghost'\] have no"),
])
def test_bad_manifest_is_named(tmp_path, manifest, message):
    write_client(tmp_path, "a", ["x", "y"])
    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(DataError, match=message) as err:
        load_jsonl_folder(tmp_path)
    assert "manifest.json" in str(err.value)


def test_task_with_a_single_label_is_named(tmp_path):
    write_client(tmp_path, "solo", ["x", "x"])
    with (tmp_path / "solo.jsonl").open("a") as f:
        f.write(json.dumps({"text": "t", "label": "x", "split": "test"}) + "\n")
    with pytest.raises(DataError, match="task 'solo': every example has the label 'x'"):
        load_jsonl_folder(tmp_path)


def test_non_utf8_line_is_named(tmp_path):
    good = json.dumps({"text": "fine", "label": "a", "split": "train"}).encode()
    (tmp_path / "c1.jsonl").write_bytes(good + b"\n" + b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"c1.jsonl:2: not UTF-8 text"):
        load_jsonl_folder(tmp_path)


def test_missing_client_file_and_folder_are_named(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_jsonl_folder(tmp_path / "absent")
    (tmp_path / "bank").mkdir()
    write_client(tmp_path / "bank", "train", ["x", "y"])
    with pytest.raises(DataError, match=r"client 'bank': .*test.jsonl does not exist"):
        load_jsonl_folder(tmp_path)


# -- data that would be silently misread -------------------------------------------------------

def test_labels_of_mixed_types_in_a_task_are_refused(tmp_path):
    """0 and "0" would become two classes of one task; across clients of a task too."""
    for name, labels in (("a", [0, 1]), ("b", ["0", "1"])):
        write_client(tmp_path, name, labels)
        with (tmp_path / f"{name}.jsonl").open("a") as f:
            f.write(json.dumps({"text": "t", "label": labels[0], "split": "test"}) + "\n")
    (tmp_path / "manifest.json").write_text(json.dumps({"clients": {"a": "t", "b": "t"}}))
    with pytest.raises(DataError, match=r"b.jsonl:1: label '0' is a string, but .*a.jsonl:1 "
                                        r"gives task 't' the label 0 \(an integer\)"):
        load_jsonl_folder(tmp_path)
    write_client(tmp_path, "b", [1, "1"])  # within one file too
    with (tmp_path / "b.jsonl").open("a") as f:
        f.write(json.dumps({"text": "t", "label": 0, "split": "test"}) + "\n")
    with pytest.raises(DataError, match=r"b.jsonl:2: label '1' is a string"):
        load_jsonl_folder(tmp_path)


def test_manifest_labels_of_mixed_types_are_refused(tmp_path):
    write_client(tmp_path, "a", [0, 1])
    (tmp_path / "manifest.json").write_text('{"labels": {"a": [0, "1"]}}')
    with pytest.raises(DataError, match=r"manifest.json: labels of task 'a' = \[0, '1'\]"):
        load_jsonl_folder(tmp_path)


def test_a_client_both_as_file_and_folder_is_refused(tmp_path):
    write_client(tmp_path, "bank", ["x", "y"])
    (tmp_path / "bank").mkdir()
    with pytest.raises(DataError, match=r"client 'bank' is both bank.jsonl and bank/"):
        load_jsonl_folder(tmp_path)


@pytest.mark.parametrize("row,message", [
    ({"task": 3}, r'c1.jsonl:2: "task" must be a non-empty string'),
    ({"task": ""}, r'c1.jsonl:2: "task" must be a non-empty string'),
    ({"task": "other"}, r"c1.jsonl:2: \"task\" = 'other', but the first line \(.*c1.jsonl:1\) "
                        r"gives client 'c1' the task 'main'"),
])
def test_task_fields_are_checked(tmp_path, row, message):
    first = {"text": "fine", "label": "a", "split": "train", "task": "main"}
    (tmp_path / "c1.jsonl").write_text(json.dumps(first) + "\n"
                                       + json.dumps({**first, "label": "b", **row}) + "\n")
    with pytest.raises(DataError, match=message):
        load_jsonl_folder(tmp_path)


def test_a_line_task_contradicting_the_manifest_is_refused(tmp_path):
    write_client(tmp_path, "a", ["x", "y"])
    with (tmp_path / "a.jsonl").open("a") as f:
        f.write(json.dumps({"text": "t", "label": "x", "split": "test", "task": "spam"}) + "\n")
    (tmp_path / "manifest.json").write_text('{"clients": {"a": "news"}}')
    with pytest.raises(DataError, match=r"a.jsonl:3: \"task\" = 'spam', but manifest.json "
                                        r"gives client 'a' the task 'news'"):
        load_jsonl_folder(tmp_path)


def test_a_key_given_twice_is_refused(tmp_path):
    good = json.dumps({"text": "fine", "label": "a", "split": "train"})
    (tmp_path / "c1.jsonl").write_text(good + '\n{"text": "x", "label": "a", "label": "b", '
                                              '"split": "train"}\n')
    with pytest.raises(DataError, match=r"c1.jsonl:2: the key 'label' appears twice"):
        load_jsonl_folder(tmp_path)
    (tmp_path / "c1.jsonl").write_text(good + "\n")
    (tmp_path / "manifest.json").write_text('{"clients": {"c1": "a", "c1": "b"}}')
    with pytest.raises(DataError, match=r"manifest.json: the key 'c1' appears twice"):
        load_jsonl_folder(tmp_path)
