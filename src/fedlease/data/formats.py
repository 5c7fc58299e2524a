"""Reading one local table with Hugging Face ``datasets``: CSV, TSV, parquet, JSON / JSON Lines,
or a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.

Nothing is downloaded: only ``datasets``' packaged builders run, in offline mode, with their
cache in a temporary folder that is removed afterwards (the table is kept in memory).
A new format is one ``@reader`` function.
"""

from __future__ import annotations

import glob
import tempfile
from collections.abc import Callable
from pathlib import Path

from fedlease.data.federation import DataError

# format -> function(path, split) -> datasets.Dataset
FORMATS: dict[str, Callable] = {}
# file suffix -> format
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".json": "json",
            ".jsonl": "json"}
INSTALL_HINT = 'pip install "fedlease[data]" (datasets, flwr-datasets)'


def reader(name: str):
    def register(function: Callable) -> Callable:
        FORMATS[name] = function
        return function
    return register


def import_datasets():
    """The ``datasets`` module, offline; a clear error when the ``data`` extra is missing."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"data.source = 'datasets' needs Hugging Face datasets: {INSTALL_HINT}") \
            from None
    datasets.config.HF_HUB_OFFLINE = True  # packaged builders only: never ask the Hub
    return datasets


def format_of(path: str, format: str) -> str:
    """The declared format, else the one its suffix (or being a folder) says."""
    if format:
        return format
    if Path(path).is_dir():
        return "disk"
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: cannot tell the format from the suffix {suffix!r}; set "
                        f"format to one of {', '.join(FORMATS)} (known suffixes: "
                        f"{', '.join(SUFFIXES)}, or a save_to_disk folder)")
    return SUFFIXES[suffix]


def read_table(path: str, format: str = "", split: str = ""):
    """The rows of ``path`` as one ``datasets.Dataset``; ``DataError`` names the file."""
    format = format_of(path, format)
    if format != "disk" and not glob.glob(path):
        raise DataError(f"{path}: no such file")
    if format == "disk" and not Path(path).is_dir():
        raise DataError(f"{path}: not a folder (format = 'disk' reads a save_to_disk folder)")
    datasets = import_datasets()
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return FORMATS[format](path, split)
    except DataError:
        raise
    except Exception as err:  # a parser's own error: malformed rows, wrong encoding...
        raise DataError(f"{path}: cannot read it as {format} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _packaged(builder: str, path: str, **options):
    """A packaged ``datasets`` builder over local files (``path`` may be a glob)."""
    datasets = import_datasets()
    with tempfile.TemporaryDirectory(prefix="fedlease-datasets-") as cache:
        return datasets.load_dataset(builder, data_files=path, split="train", cache_dir=cache,
                                     keep_in_memory=True, **options)


@reader("csv")
def read_csv(path: str, split: str):
    return _packaged("csv", path)


@reader("tsv")
def read_tsv(path: str, split: str):
    return _packaged("csv", path, delimiter="\t")


@reader("parquet")
def read_parquet(path: str, split: str):
    return _packaged("parquet", path)


@reader("json")
def read_json(path: str, split: str):
    """JSON Lines, or one JSON array of objects."""
    return _packaged("json", path)


@reader("disk")
def read_saved(path: str, split: str):
    """A ``save_to_disk`` folder: a ``Dataset``, or a ``DatasetDict`` whose ``split`` (all
    splits pooled, in their saved order, when ``split`` is "") is read."""
    datasets = import_datasets()
    try:
        saved = datasets.load_from_disk(path, keep_in_memory=True)
    except FileNotFoundError:
        raise DataError(f"{path}: not a folder written by Dataset.save_to_disk or "
                        "DatasetDict.save_to_disk (no dataset_info.json / dataset_dict.json)") \
            from None
    if isinstance(saved, datasets.Dataset):
        if split:
            raise DataError(f"{path}: split = {split!r}, but the folder holds one Dataset "
                            "without splits; leave split empty")
        return saved
    if split and split not in saved:
        raise DataError(f"{path}: no split {split!r}; the folder holds {sorted(saved)}")
    parts = [saved[split]] if split else list(saved.values())  # in the order they were saved
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as err:
        raise DataError(f"{path}: its splits {sorted(saved)} have different columns, so they "
                        f"cannot be pooled; choose one with split = \"...\" ({err})") from None
