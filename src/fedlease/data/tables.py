"""``data.source = "datasets"``: local tables, each partitioned into clients.

Every ``[[data.datasets]]`` table names a file (or a saved ``datasets`` folder), the columns to
read and a Flower Datasets partitioner. Its clients are ``<name>-0 .. <name>-(N-1)``, all of task
``<name>``; each client's rows are split into train and test by the seed. The clients of all
tables, in table order, are the federation (so ``partition-id`` k on Flower is the k-th).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from fedlease.data.client_data import ClientData, Example
from fedlease.data.formats import FORMATS, read_table
from fedlease.data.partitioners import PARTITIONERS, partition_rows
from fedlease.errors import DataError

if TYPE_CHECKING:  # annotations only
    from fedlease.config.schema import DataConfig, DatasetConfig


def dataset_problems(data: DataConfig) -> list[str]:
    """What is wrong with the ``[[data.datasets]]`` tables (the file itself is read later): the
    config checks of ``data.source = "datasets"``."""
    if not data.datasets:
        return ["data.source = 'datasets' needs at least one [[data.datasets]] table "
                "(path, partitioner, num_partitions, ...)"]
    problems = []
    for i, d in enumerate(data.datasets):
        where = f"data.datasets[{i}]"

        def need(ok: bool, name: str, expected: str, value, where: str = where):
            if not ok:
                problems.append(f"{where}.{name} = {value!r}: expected {expected}")

        need(bool(d.path), "path", "a data file or a save_to_disk folder", d.path)
        need(d.format in ("", *FORMATS), "format", "one of " + ", ".join(FORMATS)
             + " (or \"\" to infer it from the path)", d.format)
        unknown = PARTITIONERS.problem(d.partitioner, f"{where}.partitioner")
        problems.extend([unknown] if unknown else [])
        need(d.num_partitions >= (0 if d.partitioner == "natural" else 1), "num_partitions",
             "an integer >= 1" + (" (0: one client per value)" if d.partitioner == "natural"
                                  else ""), d.num_partitions)
        need(d.partitioner != "natural" or bool(d.partition_by), "partition_by",
             "the column whose values are the clients (natural partitioning)", d.partition_by)
        need(0 < d.alpha < math.inf, "alpha", "a number > 0", d.alpha)
        need(d.min_partition_size >= 0, "min_partition_size", "an integer >= 0",
             d.min_partition_size)
        need(d.shards_per_partition >= 1, "shards_per_partition", "an integer >= 1",
             d.shards_per_partition)
        need(d.classes_per_partition >= 1, "classes_per_partition", "an integer >= 1",
             d.classes_per_partition)
        need(d.max_examples >= 0, "max_examples", "an integer >= 0 (0: all rows)",
             d.max_examples)
        need(0 < d.test_fraction < 1, "test_fraction", "a number in (0, 1)", d.test_fraction)
        need(len(set(d.labels)) == len(d.labels) and len(d.labels) != 1, "labels",
             "[] or a list of at least 2 distinct label values", d.labels)
        for column in ("text", "label", "instruction", "output"):
            need(bool(getattr(d, column)), column, "a column name", getattr(d, column))
        need(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", d.task_name) is not None, "name",
             "a task name of letters, digits, '_', '-' or '.' (client ids and file names are "
             f"made of it; the path's stem {d.task_name!r} is not one)", d.name)
    names = [d.task_name for d in data.datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"data.datasets: task name(s) {repeated} are used by more than one "
                        "table; give each its own name")
    return problems


def load_partitioned(data: DataConfig, seed: int) -> list[ClientData]:
    """Classification clients: columns ``text`` (+ ``text_pair``) and ``label``."""
    return partition_datasets(data, seed, read_labelled, ClientData)


def partition_datasets(data: DataConfig, seed: int, read: Callable, make_client: Callable) -> list:
    """The clients of every ``[[data.datasets]]`` table, in table order.

    ``read(dataset, table, where)`` turns a table into ``(examples, labels, label_of_row)``:
    the examples row by row, the task's labels (``None`` without labels) and each row's label
    index (the default column to partition by; ``None`` without labels);
    ``make_client(client_id, task, labels, train, test)`` builds a client.
    """
    return [client for i, dataset in enumerate(data.datasets)
            for client in _partition(dataset, i, seed, read, make_client)]


def _partition(dataset: DatasetConfig, index: int, seed: int, read: Callable,
               make_client: Callable) -> list:
    """Read the table, partition its rows, split each client's rows into train and test."""
    name = dataset.task_name
    where = f"data.datasets[{index}] ({dataset.path})"
    try:
        table = read_table(dataset.path, dataset.format, dataset.split)
    except DataError as err:  # it names the file; add which table
        raise DataError(f"data.datasets[{index}]: {err}") from None
    if 0 < dataset.max_examples < len(table):
        rows = sorted(random.Random(f"{seed}:{name}:sample").sample(range(len(table)),
                                                                    dataset.max_examples))
        table = table.select(rows)
    if len(table) == 0:
        raise DataError(f"{where}: the table has no rows")
    examples, labels, label_of_row = read(dataset, table, where)
    if dataset.partition_by:
        by = [str(v) for v in columns(table, dataset, ("partition_by",), where)[0]]
    elif label_of_row is not None:
        by = label_of_row
    elif dataset.partitioner == "iid":
        by = [0] * len(table)
    else:
        raise DataError(f"{where}: the {dataset.partitioner} partitioner needs a column to "
                        "partition by and this data has no label column: set partition_by")
    clients = []
    # the k-th table is dealt with seed + k: two tables of alike labels get unlike partitions
    for i, rows in enumerate(partition_rows(dataset, by, seed + index, where)):
        cid = f"{name}-{i}"
        if len(rows) < 2:
            raise DataError(f"{where}: client {cid} got {len(rows)} example(s); every client "
                            "needs at least 2 (1 train + 1 test): use fewer partitions, more "
                            "rows, or a larger min_partition_size (dirichlet)")
        rows = list(rows)
        random.Random(f"{seed}:{name}:{i}").shuffle(rows)
        num_test = min(len(rows) - 1, max(1, math.ceil(dataset.test_fraction * len(rows))))
        train = [examples[r] for r in rows[num_test:]]
        test = [examples[r] for r in rows[:num_test]]
        clients.append(make_client(cid, name, labels, train, test))
    return clients


def columns(table, dataset: DatasetConfig, fields: tuple[str, ...], where: str) -> list[list]:
    """The values of the columns that ``fields`` of the dataset table name, in that order."""
    missing = [f"{getattr(dataset, f)!r} (data.datasets.{f})" for f in fields
               if getattr(dataset, f) not in table.column_names]
    if missing:
        raise DataError(f"{where}: no column {', '.join(missing)}; the file's columns are "
                        f"{table.column_names}")
    return [list(table[getattr(dataset, f)]) for f in fields]


def text_value(value, column: str, row: int, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or not (allow_empty or value.strip()):
        raise DataError(f"{where}: data row {row + 1}, column {column!r}: expected a non-empty "
                        f"string, got {value!r}")
    return value


def read_labelled(dataset: DatasetConfig, table, where: str):
    fields = ("text", "label") + (("text_pair",) if dataset.text_pair else ())
    texts, raw_labels, *pairs = columns(table, dataset, fields, where)
    feature = table.features[dataset.label]
    class_names = getattr(feature, "names", None)  # a ClassLabel column: ints with names
    values = []
    for row, value in enumerate(raw_labels):
        if value is None or isinstance(value, (bool, float, list, dict)):
            raise DataError(f"{where}: data row {row + 1}, column {dataset.label!r}: expected "
                            f"a label (a string or an integer), got {value!r}")
        values.append(class_names[value] if class_names else value)
    labels = (list(dataset.labels) or class_names
              or [str(v) for v in sorted(set(values), key=lambda v: (isinstance(v, str), v))])
    index = {name: i for i, name in enumerate(labels)}
    label_of_row = []
    for row, value in enumerate(values):
        if str(value) not in index:
            raise DataError(f"{where}: data row {row + 1}: label {value!r} is not one of the "
                            f"declared labels {labels} (data.datasets.labels)")
        label_of_row.append(index[str(value)])
    if len(labels) < 2:
        raise DataError(f"{where}: every row has the label {labels[0]!r}; a classifier needs "
                        "at least 2 labels (declare them with labels = [...] if some are "
                        "absent from the file)")
    examples = [Example(text_value(text, dataset.text, row, where), label,
                        text_value(pairs[0][row], dataset.text_pair, row, where) if pairs else None)
                for row, (text, label) in enumerate(zip(texts, label_of_row, strict=True))]
    return examples, list(labels), label_of_row
