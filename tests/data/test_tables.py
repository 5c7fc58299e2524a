"""data.source = "datasets": local tables in every format, partitioned into clients by Flower
Datasets partitioners, split train/test by seed; errors name the file and the column."""

import json
import sys
from collections import Counter

import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("flwr_datasets")

from fedlease.config import DataConfig, DatasetConfig  # noqa: E402
from fedlease.configure import load_config  # noqa: E402
from fedlease.data.instructions import load_instruction_federation  # noqa: E402
from fedlease.data.sources import load_source_clients  # noqa: E402
from fedlease.errors import ConfigError, DataError  # noqa: E402

from ..conftest import planted_table, write_csv  # noqa: E402


def federation(*tables: DatasetConfig, seed: int = 0):
    return load_source_clients(DataConfig(source="datasets", datasets=list(tables)), seed)


def texts(clients, part: str) -> list[str]:
    return [e.text for c in clients for e in getattr(c, part)]


@pytest.fixture
def table():
    return planted_table()


@pytest.fixture
def csv_path(tmp_path, table):
    return write_csv(tmp_path / "colors.csv", table)


def write_format(tmp_path, table, format: str) -> str:
    rows = datasets.Dataset.from_dict(table)
    if format == "csv":
        return write_csv(tmp_path / "t.csv", table)
    if format == "tsv":
        return write_csv(tmp_path / "t.tsv", table, delimiter="\t")
    if format == "jsonl":
        path = tmp_path / "t.jsonl"
        path.write_text("".join(json.dumps(dict(zip(table, r, strict=True))) + "\n"
                                for r in zip(*table.values(), strict=True)))
        return str(path)
    if format == "json-array":
        path = tmp_path / "t.json"
        path.write_text(json.dumps([dict(zip(table, r, strict=True))
                                    for r in zip(*table.values(), strict=True)]))
        return str(path)
    if format == "parquet":
        rows.to_parquet(str(tmp_path / "t.parquet"))
        return str(tmp_path / "t.parquet")
    if format == "disk":
        rows.save_to_disk(str(tmp_path / "saved"))
        return str(tmp_path / "saved")
    # a DatasetDict: its splits are pooled
    datasets.DatasetDict({"train": rows.select(range(200)),
                          "test": rows.select(range(200, len(rows)))}
                         ).save_to_disk(str(tmp_path / "saved_dict"))
    return str(tmp_path / "saved_dict")


@pytest.mark.parametrize("format", ["csv", "tsv", "jsonl", "json-array", "parquet", "disk",
                                    "disk-dict"])
def test_every_format_gives_the_same_federation(tmp_path, table, format):
    path = write_format(tmp_path, table, format)
    clients = federation(DatasetConfig(path=path, name="colors", num_partitions=3))
    reference = federation(DatasetConfig(path=write_csv(tmp_path / "ref.csv", table),
                                         name="colors", num_partitions=3))
    assert [c.client_id for c in clients] == ["colors-0", "colors-1", "colors-2"]
    assert {c.task for c in clients} == {"colors"}
    assert all(c.labels == ["blue", "red"] for c in clients)
    for part in ("train", "test"):
        assert texts(clients, part) == texts(reference, part)
    everything = texts(clients, "train") + texts(clients, "test")
    assert sorted(everything) == sorted(table["text"])  # every row once, no row twice
    label_of = dict(zip(table["text"], table["label"], strict=True))
    assert all(clients[0].labels[e.label] == label_of[e.text]
               for c in clients for e in c.train + c.test)


def test_train_test_split_is_reproducible_by_seed(csv_path):
    config = DatasetConfig(path=csv_path, num_partitions=4, test_fraction=0.25)
    first, again, other = federation(config), federation(config), federation(config, seed=1)
    assert [(c.train, c.test) for c in first] == [(c.train, c.test) for c in again]
    assert texts(first, "test") != texts(other, "test")
    for c in first:
        assert len(c.test) == -(-(len(c.train) + len(c.test)) // 4)  # ceil(25%)
        assert not {e.text for e in c.train} & {e.text for e in c.test}
    assert first[0].client_id == "colors-0"  # the task is the file's stem


def label_shares(client) -> list[float]:
    counts = Counter(e.label for e in client.train + client.test)
    total = sum(counts.values())
    return sorted((n / total for n in counts.values()), reverse=True)


def test_dirichlet_skews_labels_and_iid_does_not(tmp_path):
    path = write_csv(tmp_path / "four.csv", planted_table(800, labels=("a", "b", "c", "d")))
    skewed = federation(DatasetConfig(path=path, partitioner="dirichlet", alpha=0.1,
                                      num_partitions=4, min_partition_size=20))
    iid = federation(DatasetConfig(path=path, partitioner="iid", num_partitions=4))
    assert max(label_shares(c)[0] for c in skewed) > 0.6
    assert max(label_shares(c)[0] for c in iid) < 0.4
    assert sorted(texts(skewed, "train") + texts(skewed, "test")) == sorted(
        texts(iid, "train") + texts(iid, "test"))
    again = federation(DatasetConfig(path=path, partitioner="dirichlet", alpha=0.1,
                                     num_partitions=4, min_partition_size=20))
    assert [len(c.train) for c in skewed] == [len(c.train) for c in again]


def test_pathological_and_shard_limit_the_labels_of_a_client(tmp_path):
    path = write_csv(tmp_path / "four.csv", planted_table(400, labels=("a", "b", "c", "d")))
    one_label = federation(DatasetConfig(path=path, partitioner="pathological",
                                         classes_per_partition=1, num_partitions=4))
    assert all(len(label_shares(c)) == 1 for c in one_label)
    shards = federation(DatasetConfig(path=path, partitioner="shard", shards_per_partition=1,
                                      num_partitions=4))
    assert all(len(label_shares(c)) == 1 for c in shards)


def test_natural_partition_makes_one_client_per_column_value(tmp_path, table):
    path = write_csv(tmp_path / "colors.csv", table)
    clients = federation(DatasetConfig(path=path, partitioner="natural", partition_by="domain",
                                       num_partitions=0))
    domain_of = dict(zip(table["text"], table["domain"], strict=True))
    assert len(clients) == 3
    assert sorted(len({domain_of[e.text] for e in c.train + c.test}) for c in clients) == [1] * 3
    with pytest.raises(DataError, match="'domain' has 3 distinct values.*num_partitions = 5"):
        federation(DatasetConfig(path=path, partitioner="natural", partition_by="domain",
                                 num_partitions=5))


def test_dirichlet_over_another_column(tmp_path, table):
    clients = federation(DatasetConfig(path=write_csv(tmp_path / "c.csv", table),
                                       partitioner="pathological", partition_by="domain",
                                       classes_per_partition=1, num_partitions=3))
    domain_of = dict(zip(table["text"], table["domain"], strict=True))
    assert all(len({domain_of[e.text] for e in c.train + c.test}) == 1 for c in clients)


def test_two_tables_make_one_federation(tmp_path, table):
    colors = write_csv(tmp_path / "colors.csv", table)
    animals = datasets.Dataset.from_dict(planted_table(120, labels=("cat", "dog"), seed=1))
    animals = animals.cast_column("label", datasets.ClassLabel(names=["dog", "cat"]))
    animals.save_to_disk(str(tmp_path / "animals"))
    clients = federation(DatasetConfig(path=colors, partitioner="dirichlet", alpha=0.5,
                                       num_partitions=2),
                         DatasetConfig(path=str(tmp_path / "animals"), name="pets",
                                       num_partitions=3))
    assert [c.client_id for c in clients] == ["colors-0", "colors-1", "pets-0", "pets-1",
                                              "pets-2"]
    pets = clients[2:]
    assert all(c.labels == ["dog", "cat"] for c in pets)  # a ClassLabel keeps its names' order
    assert all("cat" in e.text.split() if c.labels[e.label] == "cat" else "dog" in e.text
               for c in pets for e in c.train)


def test_declared_labels_keep_their_order_and_max_examples_samples(csv_path):
    clients = federation(DatasetConfig(path=csv_path, labels=["red", "blue", "green"],
                                       max_examples=60, num_partitions=2))
    assert clients[0].labels == ["red", "blue", "green"]
    assert sum(len(c.train) + len(c.test) for c in clients) == 60


def test_text_pairs(tmp_path):
    table = planted_table(40)
    table["second"] = [f"pair {t}" for t in table["text"]]
    clients = federation(DatasetConfig(path=write_csv(tmp_path / "p.csv", table),
                                       text_pair="second", num_partitions=2))
    assert all(e.text_pair == f"pair {e.text}" for c in clients for e in c.train)


@pytest.mark.parametrize("change, message", [
    ({"text": "sentence"}, r"no column 'sentence' \(data.datasets.text\); the file's columns "
                           r"are \['text', 'label', 'domain'\]"),
    ({"label": "y"}, r"no column 'y' \(data.datasets.label\)"),
    ({"text_pair": "other"}, r"no column 'other' \(data.datasets.text_pair\)"),
    ({"partition_by": "source", "partitioner": "natural"},
     r"no column 'source' \(data.datasets.partition_by\)"),
    ({"labels": ["red", "green"]}, r"data row 2: label 'blue' is not one of the declared "
                                   r"labels \['red', 'green'\]"),
    ({"num_partitions": 200}, "got [01] example"),
    ({"partitioner": "dirichlet", "alpha": 0.01, "num_partitions": 10,
      "min_partition_size": 50}, "the dirichlet partitioner cannot split its 240 rows"),
])
def test_errors_name_the_file_and_the_column(csv_path, change, message):
    with pytest.raises(DataError, match=message) as err:
        federation(DatasetConfig(path=csv_path, **change))
    assert f"data.datasets[0] ({csv_path})" in str(err.value)


def test_bad_rows_and_files_are_named(tmp_path):
    table = planted_table(20)
    table["text"][4] = ""
    with pytest.raises(DataError, match=r"data row 5, column 'text': expected a non-empty "):
        federation(DatasetConfig(path=write_csv(tmp_path / "empty.csv", table)))
    one_label = planted_table(20, labels=("red",))
    with pytest.raises(DataError, match="every row has the label 'red'"):
        federation(DatasetConfig(path=write_csv(tmp_path / "one.csv", one_label)))
    with pytest.raises(DataError, match=r"^data.datasets\[0\]: .*missing.csv: no such file"):
        federation(DatasetConfig(path=str(tmp_path / "missing.csv")))
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"t.xlsx: cannot tell the format from the suffix"):
        federation(DatasetConfig(path=str(tmp_path / "t.xlsx")))
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(DataError, match=r"broken.jsonl: cannot read it as json"):
        federation(DatasetConfig(path=str(tmp_path / "broken.jsonl")))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain: not a folder written by Dataset.save_to_disk"):
        federation(DatasetConfig(path=str(tmp_path / "plain")))


def test_saved_split_is_chosen_or_named(tmp_path, table):
    path = write_format(tmp_path, table, "disk-dict")
    clients = federation(DatasetConfig(path=path, split="test", num_partitions=2))
    assert sum(len(c.train) + len(c.test) for c in clients) == 40
    with pytest.raises(DataError, match=r"no split 'dev'; the folder holds \['test', 'train'\]"):
        federation(DatasetConfig(path=path, split="dev"))


def test_instruction_tables_for_generation(tmp_path):
    rows = {"instruction": ["name the color"] * 30, "input": [f"it is red {i}" for i in range(30)],
            "output": ["red"] * 30, "topic": ["a", "b", "c"] * 10}
    path = write_csv(tmp_path / "ins.csv", rows)
    data = DataConfig(source="datasets", datasets=[DatasetConfig(
        path=path, partitioner="natural", partition_by="topic", num_partitions=0)])
    clients = load_instruction_federation(data, seed=0)
    assert [c.client_id for c in clients] == ["ins-0", "ins-1", "ins-2"]
    assert all(e.output == "red" and e.input.startswith("it is red") for c in clients
               for e in c.train + c.test)
    assert sum(len(c.train) + len(c.test) for c in clients) == 30
    no_input = DataConfig(source="datasets", datasets=[DatasetConfig(path=path, input="")])
    assert all(e.input == "" for c in load_instruction_federation(no_input, 0) for e in c.train)
    del rows["input"]
    write_csv(tmp_path / "ins.csv", rows)
    with pytest.raises(DataError, match=r"no column 'input' .*set input = \"\" if the examples "
                                        "have no input"):
        load_instruction_federation(data, 0)
    dirichlet = DataConfig(source="datasets", datasets=[DatasetConfig(path=path, input="",
                                                                      partitioner="dirichlet")])
    with pytest.raises(DataError, match="has no label column: set partition_by"):
        load_instruction_federation(dirichlet, 0)


def test_config_tables_are_read_and_checked(tmp_path, csv_path):
    good = tmp_path / "good.toml"
    good.write_text(f'[data]\nsource = "datasets"\n[[data.datasets]]\npath = "{csv_path}"\n'
                    'partitioner = "dirichlet"\nalpha = 0.3\nnum_partitions = 3\n'
                    '[[data.datasets]]\npath = "other.parquet"\nname = "b"\n')
    config = load_config(good)
    assert [d.partitioner for d in config.data.datasets] == ["dirichlet", "iid"]
    assert config.data.datasets[0].alpha == 0.3
    from fedlease.config import dump_toml

    (tmp_path / "again.toml").write_text(dump_toml(config))
    assert load_config(tmp_path / "again.toml") == config


@pytest.mark.parametrize("tables, message", [
    ("[[data.datasets]]\npath = 'a.csv'\npartitioner = 'random'",
     r"data.datasets\[0\].partitioner = 'random': expected one of iid, dirichlet, shard, "
     "pathological, natural"),
    ("[[data.datasets]]\npath = 'a.csv'\nformat = 'xls'", r"data.datasets\[0\].format = 'xls'"),
    ("[[data.datasets]]\npath = 'a.csv'\nalpha = 0", r"data.datasets\[0\].alpha = 0.0"),
    ("[[data.datasets]]\npath = 'a.csv'\ntest_fraction = 1", r"test_fraction = 1.0"),
    ("[[data.datasets]]\npath = 'a.csv'\npartitioner = 'natural'",
     r"data.datasets\[0\].partition_by = '': expected the column"),
    ("[[data.datasets]]\npath = 'a.csv'\n[[data.datasets]]\npath = 'b/a.parquet'",
     r"task name\(s\) \['a'\] are used by more than one table"),
    ("[[data.datasets]]\npath = 'a.csv'\ncolumn = 'x'",
     r"unknown key\(s\) \['column'\] in \[data.datasets\[0\]\]"),
    ("[[data.datasets]]\npath = 'a.csv'\nnum_partitions = 'four'",
     r"data.datasets\[0\].num_partitions = 'four': expected int"),
    ("", "data.source = 'datasets' needs at least one \\[\\[data.datasets\\]\\] table"),
    ("[[data.datasets]]\npath = 'data/*.csv'", r"data.datasets\[0\].name = '': expected a task "
                                             r"name .* the path's stem '\*' is not one"),
])
def test_config_errors_name_the_table_and_field(tmp_path, tables, message):
    path = tmp_path / "c.toml"
    path.write_text(f'[data]\nsource = "datasets"\n{tables}\n')
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_tables_without_the_datasets_source_are_an_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[[data.datasets]]\npath = 'a.csv'\n")
    with pytest.raises(ConfigError, match=r"but data.source = 'builtin': set data.source"):
        load_config(path)


def test_alike_tables_get_unlike_partitions(tmp_path, table):
    # the k-th table is partitioned with seed + k, so two copies are not skewed the same way
    copies = [DatasetConfig(path=write_csv(tmp_path / f"{n}.csv", table), partitioner="dirichlet",
                            alpha=0.3, num_partitions=4) for n in ("a", "b")]
    clients = federation(*copies)
    sizes = [[len(c.train) for c in clients if c.task == n] for n in ("a", "b")]
    assert sizes[0] != sizes[1]
    assert sizes[0] == [len(c.train) for c in federation(copies[0])]  # the first: the seed


def test_missing_extra_is_a_clear_error(monkeypatch, csv_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(DataError, match=r'Hugging Face datasets: pip install "fedlease\[data\]"'):
        federation(DatasetConfig(path=csv_path))
