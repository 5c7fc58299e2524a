"""Flower Datasets partitioners by name: how one dataset's rows become clients.

Each entry builds a ``flwr_datasets`` partitioner from a ``[[data.datasets]]`` table. The
partitioner reads the column ``BY`` of a small index table (row number, and the value of the
column partitioned by), so only row numbers, never texts, go through it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from fedlease.errors import DataError
from fedlease.registry import Registry

BY = "by"  # the index table's column the partitioner reads
ROW = "row"  # the index table's row numbers

# name -> function(dataset table, seed) -> a flwr_datasets Partitioner
PARTITIONERS: Registry[Callable] = Registry("partitioner")


def _flwr():
    try:
        import flwr_datasets.partitioner as module
    except ImportError:
        from fedlease.data.formats import INSTALL_HINT

        raise DataError(f"partitioning a dataset needs Flower Datasets: {INSTALL_HINT}") \
            from None
    return module


@PARTITIONERS.registers("iid")
def iid(dataset, seed: int):
    return _flwr().IidPartitioner(num_partitions=dataset.num_partitions)


@PARTITIONERS.registers("dirichlet")
def dirichlet(dataset, seed: int):
    """Per value of the column, client shares drawn from Dirichlet(alpha)."""
    return _flwr().DirichletPartitioner(
        num_partitions=dataset.num_partitions, partition_by=BY, alpha=dataset.alpha,
        min_partition_size=dataset.min_partition_size, seed=seed)


@PARTITIONERS.registers("shard")
def shard(dataset, seed: int):
    """Rows sorted by the column, cut into shards; each client gets shards_per_partition."""
    return _flwr().ShardPartitioner(
        num_partitions=dataset.num_partitions, partition_by=BY,
        num_shards_per_partition=dataset.shards_per_partition, seed=seed)


@PARTITIONERS.registers("pathological")
def pathological(dataset, seed: int):
    """Each client gets classes_per_partition values of the column (pathological non-IID)."""
    return _flwr().PathologicalPartitioner(
        num_partitions=dataset.num_partitions, partition_by=BY,
        num_classes_per_partition=dataset.classes_per_partition, seed=seed)


@PARTITIONERS.registers("natural")
def natural(dataset, seed: int):
    """One client per distinct value of the column (a domain, a user, a source)."""
    return _flwr().NaturalIdPartitioner(partition_by=BY)


def partition_rows(dataset, by: list, seed: int, where: str) -> list[list[int]]:
    """Row numbers of each client, as the configured partitioner deals ``by`` (one value per
    row). ``where`` names the dataset in errors."""
    from fedlease.data.formats import import_datasets

    index = import_datasets().Dataset.from_dict({ROW: list(range(len(by))), BY: by})
    built = PARTITIONERS[dataset.partitioner](dataset, seed)
    built.dataset = index
    try:
        with warnings.catch_warnings():
            # pyarrow 25+ deprecates an option that datasets sort still passes; the dirichlet
            # partitioner warns on every retry (a DataError follows if all fail)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            count = built.num_partitions
            if dataset.partitioner == "natural" and dataset.num_partitions not in (0, count):
                raise DataError(f"{where}: partition_by = {dataset.partition_by!r} has {count} "
                                f"distinct values, so natural partitioning makes {count} "
                                f"clients, not num_partitions = {dataset.num_partitions} (set "
                                f"it to {count} or 0)")
            return [list(built.load_partition(i)[ROW]) for i in range(count)]
    except DataError:
        raise
    except (ValueError, KeyError) as err:
        raise DataError(f"{where}: the {dataset.partitioner} partitioner cannot split its "
                        f"{len(by)} rows into {dataset.num_partitions} clients: {err}") from None
