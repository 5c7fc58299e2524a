"""Where a federation's examples come from: the built-in sample, a glue_data folder, JSONL, or
local tables partitioned into clients (``tables.py``).

Every loader returns a list of ``ClientData``; ``load_source_clients`` picks one by ``data.source``
from ``SOURCES`` (defined at the end of this module), which also says what the source reads
from the config, so config validation needs no list of its own.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from fedlease.data.client_data import ClientData, Example, split_task
from fedlease.data.skewed import split_task_skewed
from fedlease.data.tables import dataset_problems, load_partitioned
from fedlease.errors import DataError
from fedlease.registry import Registry

if TYPE_CHECKING:  # annotations only: config validation imports this package
    from fedlease.config.schema import DataConfig

BUILTIN_TASKS = ("sentiment", "news", "spam", "uncertainty")


def load_source_clients(data: DataConfig, seed: int) -> list[ClientData]:
    if data.source not in SOURCES:
        raise DataError(f"data.source = {data.source!r}: expected one of {', '.join(SOURCES)}")
    return SOURCES[data.source].load(data, seed)


def _split_all(data: DataConfig, seed: int, pools: dict[str, tuple[list[str], list[Example]]]):
    clients = []
    for task in data.tasks:
        labels, pool = pools[task]
        if data.label_skew > 0:  # many small label-skewed clients (skewed.py)
            clients += split_task_skewed(task, labels, pool, data.clients_per_task,
                                         data.train_per_client, data.test_per_client,
                                         data.label_skew, seed)
        else:
            clients += split_task(task, labels, pool, data.clients_per_task,
                                  data.train_per_client, data.test_per_client, seed)
    return clients


# -- built-in: real text shipped as package data (see DATA.md) ---------------------------------

def builtin_dir():
    return resources.files("fedlease") / "data" / "builtin"


def load_builtin(data: DataConfig, seed: int) -> list[ClientData]:
    manifest = json.loads((builtin_dir() / "manifest.json").read_text())["tasks"]
    unknown = [t for t in data.tasks if t not in manifest]
    if unknown:
        raise DataError(f"data.tasks: {unknown} are not built-in tasks; expected some of "
                        f"{sorted(manifest)}")
    pools = {}
    for task in data.tasks:
        labels = manifest[task]["labels"]
        index = {name: i for i, name in enumerate(labels)}
        with gzip.open(builtin_dir() / manifest[task]["file"], "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        pools[task] = (labels, [Example(r["text"], index[r["label"]]) for r in rows])
    return _split_all(data, seed, pools)


# -- GLUE: the standard glue_data layout (SST-2, QNLI, MRPC, QQP) ------------------------------

# task -> (text column, pair column or None, label column, label names in file order)
GLUE_COLUMNS = {
    "SST-2": ("sentence", None, "label", ["0", "1"]),
    "QNLI": ("question", "sentence", "label", ["entailment", "not_entailment"]),
    "MRPC": ("#1 String", "#2 String", "Quality", ["0", "1"]),
    "QQP": ("question1", "question2", "is_duplicate", ["0", "1"]),
}
GLUE_FILES = ("train.tsv", "dev.tsv", "test_labeled.tsv")


def read_glue_task(folder: Path, task: str) -> list[Example]:
    """Pool every labelled file of a task; rows with a missing field are skipped (QQP has some)."""
    if task not in GLUE_COLUMNS:
        raise DataError(f"data.tasks: {task!r} is not a GLUE task this loader reads; expected "
                        f"some of {sorted(GLUE_COLUMNS)}")
    text_col, pair_col, label_col, label_names = GLUE_COLUMNS[task]
    index = {name: i for i, name in enumerate(label_names)}
    files = [folder / task / name for name in GLUE_FILES if (folder / task / name).exists()]
    if not files:
        raise DataError(f"{folder / task}: no {' / '.join(GLUE_FILES)} found for task {task}")
    examples, seen = [], set()
    for path in files:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            missing = {text_col, label_col, pair_col or text_col} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: missing column(s) {sorted(missing)}")
            for row in reader:
                text, label = row.get(text_col), row.get(label_col)
                pair = row.get(pair_col) if pair_col else None
                if not text or label not in index or (pair_col and not pair):
                    continue
                key = (text, pair)
                if key not in seen:
                    seen.add(key)
                    examples.append(Example(text.strip(), index[label],
                                            pair.strip() if pair else None))
    return examples


def load_glue(data: DataConfig, seed: int) -> list[ClientData]:
    folder = Path(data.path)
    if not folder.is_dir():
        raise DataError(f"data.path = {str(folder)!r}: not a folder (expected a glue_data folder)")
    pools = {}
    for task in data.tasks:
        names = GLUE_COLUMNS.get(task, (None, None, None, []))[3]
        pools[task] = (list(names), read_glue_task(folder, task))
    return _split_all(data, seed, pools)


# -- JSONL: a folder of per-client files the user brings ---------------------------------------

def load_jsonl_folder(folder: Path) -> list[ClientData]:
    """One ``<client>.jsonl`` per client (or ``<client>/train.jsonl`` + ``test.jsonl``).

    Lines are ``{"text", "label"}`` or ``{"text", "text_pair", "label"}``. A client's task is
    read from ``manifest.json`` (``{"clients": {"<client>": "<task>"}}``) if present, else from
    a ``"task"`` field on the lines, else it is the client's own name. The manifest may also
    declare a task's labels (``"labels": {"<task>": ["neg", "pos"]}``): then every line's label
    must be one of them, and they keep their declared order; otherwise a task's labels are the
    sorted labels its lines use. Each file must carry a ``"split"`` field ("train"/"test") when
    train and test share one file.
    """
    clients, declared_labels = read_jsonl_clients(folder, check_labelled_row)
    labels_by_task: dict[str, set] = {}
    first_label: dict[str, tuple[str, str | int]] = {}  # task -> (file:line, label)
    for _name, task, splits in clients:
        for where, row in splits["train"] + splits["test"]:
            label = row["label"]
            if task in declared_labels and label not in declared_labels[task]:
                raise DataError(f"{where}: label {label!r} is not one of the labels "
                                f"manifest.json declares for task {task!r}: "
                                f"{declared_labels[task]}")
            seen_at, seen = first_label.setdefault(task, (where, label))
            if type(label) is not type(seen):  # 0 and "0" would become two classes
                raise DataError(f"{where}: label {label!r} is {_kind(label)}, but {seen_at} "
                                f"gives task {task!r} the label {seen!r} ({_kind(seen)}); use "
                                "one type for the labels of a task")
            labels_by_task.setdefault(task, set()).add(label)
    label_lists = {t: declared_labels.get(t) or sorted(ls, key=str)
                   for t, ls in labels_by_task.items()}
    for task, labels in label_lists.items():
        if len(labels) < 2:
            raise DataError(f"task {task!r}: every example has the label {labels[0]!r}; a "
                            "classifier needs at least 2 labels (declare them in manifest.json "
                            "under \"labels\" if some are absent from the data)")
    out = []
    for name, task, splits in clients:
        labels = label_lists[task]
        examples = {part: [Example(r["text"], labels.index(r["label"]), r.get("text_pair"))
                           for _, r in rows] for part, rows in splits.items()}
        out.append(ClientData(name, task, [str(x) for x in labels], examples["train"],
                              examples["test"]))
    return out


def _kind(label) -> str:
    return "a string" if isinstance(label, str) else "an integer"


def check_labelled_row(where: str, row: dict, label_required: bool = True) -> None:
    """``label_required = False``: rows to predict, whose label may be missing."""
    if not isinstance(row.get("text"), str) or not row["text"].strip():
        raise DataError(f"{where}: \"text\" must be a non-empty string")
    if "text_pair" in row and (not isinstance(row["text_pair"], str)
                               or not row["text_pair"].strip()):
        raise DataError(f"{where}: \"text_pair\" must be a non-empty string")
    if not label_required and "label" not in row:
        return
    if not isinstance(row.get("label"), (str, int)) or isinstance(row["label"], bool):
        raise DataError(f"{where}: \"label\" must be a string or an integer")


def read_jsonl_clients(folder: Path, check_row):
    """The clients of a JSONL folder (layout and task naming: see ``load_jsonl_folder``) as
    ``[(client, task, {"train": [(file:line, row)], "test": [...]})]``, and the manifest's
    declared labels per task. ``check_row(where, row)`` raises ``DataError`` for a line whose
    fields do not fit the task."""
    if not folder.is_dir():
        raise DataError(f"data.path = {str(folder)!r}: not a folder of per-client JSONL files")
    tasks_by_client, declared_labels = _read_manifest(folder / "manifest.json")
    sources = {p.stem: [p] for p in sorted(folder.glob("*.jsonl"))}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name in sources:
            raise DataError(f"{folder}: client {sub.name!r} is both {sub.name}.jsonl and "
                            f"{sub.name}/; keep one of them (or rename one: they would be "
                            "two clients)")
        sources[sub.name] = [sub / "train.jsonl", sub / "test.jsonl"]
    if not sources:
        raise DataError(f"{folder}: no *.jsonl files or client folders found")
    unknown = sorted(set(tasks_by_client) - set(sources))
    if unknown:
        raise DataError(f"{folder / 'manifest.json'}: clients {unknown} have no <client>.jsonl "
                        f"or <client>/ folder in {folder}")
    clients = []
    for name, paths in sources.items():
        rows = _read_client_rows(name, paths, check_row)
        task = tasks_by_client.get(name) or rows[0][1].get("task") or name
        for where, row, _ in rows:
            if "task" in row and row["task"] != task:
                source = ("manifest.json" if name in tasks_by_client
                          else f"the first line ({rows[0][0]})")
                raise DataError(f"{where}: \"task\" = {row['task']!r}, but {source} gives "
                                f"client {name!r} the task {task!r}; a client has one task")
        splits = {"train": [], "test": []}
        for where, row, default_split in rows:
            splits[row.get("split", default_split)].append((where, row))
        for part in ("train", "test"):
            if not splits[part]:
                raise DataError(f"client {name!r} ({paths[0]}): no {part} examples")
        clients.append((name, task, splits))
    return clients, declared_labels


def _read_manifest(path: Path) -> tuple[dict[str, str], dict[str, list]]:
    """``manifest.json``'s client -> task map and task -> declared labels (both optional)."""
    if not path.exists():
        return {}, {}
    expected = ('expected {"clients": {"<client>": "<task>"}, '
                '"labels": {"<task>": [<label>, <label>, ...]}} ("labels" optional)')
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not readable JSON ({err}); {expected}") from None
    except _DuplicateKey as err:
        raise DataError(f"{path}: the key {err.args[0]!r} appears twice; {expected}") from None
    if not isinstance(manifest, dict) or set(manifest) - {"clients", "labels"}:
        raise DataError(f"{path}: {expected}")
    clients, labels = manifest.get("clients", {}), manifest.get("labels", {})
    if not isinstance(clients, dict) or not all(isinstance(t, str) for t in clients.values()):
        raise DataError(f"{path}: \"clients\" must map client names to task names; {expected}")
    if not isinstance(labels, dict):
        raise DataError(f"{path}: \"labels\" must map task names to label lists; {expected}")
    for task, names in labels.items():
        if (not isinstance(names, list) or len(names) < 2 or len(set(names)) != len(names)
                or not (all(isinstance(x, str) for x in names)
                        or all(type(x) is int for x in names))):
            raise DataError(f"{path}: labels of task {task!r} = {names!r}: expected a list of "
                            "at least 2 distinct strings, or of at least 2 distinct integers")
    return dict(clients), labels


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object as a dict; a key given twice (which ``json`` would silently resolve to
    the last value) raises ``_DuplicateKey``."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey(next(k for i, (k, _) in enumerate(pairs)
                                 if k in dict(pairs[:i])))
    return out


def read_jsonl_rows(path: Path, check_row, owner: str = "") -> list[tuple[str, dict]]:
    """(``file:line``, row) for every non-empty line of one JSONL file; a missing file or a
    malformed line raises DataError (``owner``, e.g. ``client 'x': ``, leads file errors)."""
    if not path.exists():
        raise DataError(f"{owner}{path} does not exist")
    try:
        lines = path.read_bytes().splitlines()
    except OSError as err:
        raise DataError(f"{owner}cannot read {path} ({err.strerror})") from None
    rows = []
    for lineno, raw in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") \
                from None
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg})") from None
        except _DuplicateKey as err:
            raise DataError(f"{where}: the key {err.args[0]!r} appears twice; expected it "
                            "once") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        if "task" in row and (not isinstance(row["task"], str) or not row["task"].strip()):
            raise DataError(f"{where}: \"task\" must be a non-empty string (the task's "
                            "name)")
        check_row(where, row)
        rows.append((where, row))
    return rows


def _read_client_rows(name: str, paths: list[Path], check_row):
    """(``file:line``, row, default split) for every line; malformed lines raise DataError."""
    rows = []
    for path in paths:
        default_split = path.stem if path.stem in ("train", "test") else None
        for where, row in read_jsonl_rows(path, check_row, f"client {name!r}: "):
            split = row.get("split", default_split)
            if split not in ("train", "test"):
                raise DataError(f"{where}: \"split\" must be \"train\" or \"test\" "
                                "(or use <client>/train.jsonl and test.jsonl)")
            rows.append((where, row, default_split))
    if not rows:
        raise DataError(f"client {name!r}: {', '.join(map(str, paths))} hold no examples")
    return rows


def load_generation_only(data: DataConfig, seed: int) -> list[ClientData]:
    raise DataError(f"data.source = {data.source!r} holds instruction tasks with free-text "
                    "answers, not labelled examples: set model.task = \"generation\" (or "
                    "data.source = \"builtin\" for the classification tasks)")


@dataclass(frozen=True)
class DataSource:
    """A ``data.source``: its loader, what it reads of ``[data]``, and its own config checks."""

    load: Callable[[DataConfig, int], list[ClientData]]  # (data, seed) -> the clients
    path: str  # data.path: "folder" (required), "none" (must be empty) or "unused"
    uses_tasks: bool  # it builds data.tasks x data.clients_per_task clients
    # the [[data.datasets]] tables: their checks, if this source reads them (None: it does not)
    datasets_problems: Callable[[DataConfig], list[str]] | None = None

    def config_problems(self, data: DataConfig) -> list[str]:
        """What in ``[data]`` this source cannot work with (one message per problem)."""
        problems = []
        if self.path == "folder" and not data.path:
            problems.append(f"data.path = {data.path!r}: expected a folder for data.source = "
                            f"{data.source!r}")
        if self.path == "none" and data.path:
            problems.append(f"data.path = {data.path!r}: expected no path with data.source = "
                            f"{data.source!r} (the built-in sample ships with fedlease); set "
                            "data.source = 'jsonl' or 'glue' to read this folder")
        if self.uses_tasks and not data.tasks:
            problems.append(f"data.tasks = {data.tasks!r}: expected a non-empty list of task "
                            "names")
        if data.label_skew > 0 and not self.uses_tasks:
            problems.append(f"data.label_skew = {data.label_skew!r}: applies to data.source = "
                            f"builtin or glue, not {data.source!r}; set it to 0")
        if self.datasets_problems is not None:
            problems += self.datasets_problems(data)
        elif data.datasets:
            problems.append(f"[[data.datasets]] is given ({len(data.datasets)} table(s)) but "
                            f"data.source = {data.source!r}: set data.source = \"datasets\" "
                            "to use them")
        return problems


SOURCES: Registry[DataSource] = Registry("data.source", {
    "builtin": DataSource(load_builtin, path="none", uses_tasks=True),
    "glue": DataSource(load_glue, path="folder", uses_tasks=True),
    "jsonl": DataSource(lambda data, seed: load_jsonl_folder(Path(data.path)), path="folder",
                        uses_tasks=False),
    "datasets": DataSource(load_partitioned, path="unused", uses_tasks=False,
                           datasets_problems=dataset_problems),
    # generation only: data/instructions.py serves it (INSTRUCTION_SOURCES)
    "instructions": DataSource(load_generation_only, path="none", uses_tasks=True),
})
