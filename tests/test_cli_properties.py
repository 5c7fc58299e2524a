"""Property-based: generated malformed configs and JSONL lines always end the CLI cleanly (exit
code 2, one message naming the file or the field, no traceback) and before anything is written,
so a run already in the output folder is left as it was."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import sys
import typing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlease import cli
from fedlease.config import MAX_SEED, RunConfig

from .conftest import write_federation

EXAMPLES = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """A tiny federation, and an output folder already holding a run's files."""
    root = tmp_path_factory.mktemp("props")
    fed = write_federation(root / "fed", train=4, test=2)
    out = root / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "config.toml").write_text("[federation]\nrounds = 2\n")
    (out / "metrics.json").write_text('{"rounds": [1]}')
    (out / "checkpoint" / "checkpoint.json").write_text("{}")
    base = {"model": {"path": str(tiny_model_dir), "max_length": 16},
            "data": {"source": "jsonl", "path": str(fed)},
            "federation": {"rounds": 2, "warmup_rounds": 1}, "output": {"dir": str(out)}}
    return root, fed, out, base


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


# -- configs ------------------------------------------------------------------------------

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def toml_text(tables: dict) -> str:
    lines = []
    for section, values in tables.items():
        if not isinstance(values, dict):
            lines.insert(0, f"{section} = {toml_value(values)}")
            continue
        lines.append(f"[{section}]")
        lines += [f"{json.dumps(key)} = {toml_value(v)}" for key, v in values.items()]
    return "\n".join(lines) + "\n"


FIELDS = [(section, f.name, typing.get_type_hints(cls)[f.name])
          for section, cls in typing.get_type_hints(RunConfig).items()
          for f in dataclasses.fields(cls)]
NAMES = st.text(st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=8)
SCALARS = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                    NAMES, st.lists(st.integers(0, 3), max_size=2))


def wrong_type(hint):
    """Values that are not of the field's type (an int is a float, as in TOML)."""
    def fits(value):
        if hint is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if typing.get_origin(hint) is list:
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        return isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    return SCALARS.filter(lambda v: not fits(v))


# impossible values, each named by its field
OUT_OF_RANGE = {
    ("lora", "rank"): st.integers(-5, 0),
    ("lora", "alpha"): st.floats(max_value=0) | st.just(math.inf),
    ("lora", "dropout"): st.floats(min_value=1) | st.floats(max_value=-1e-9),
    ("model", "task"): NAMES.filter(lambda t: t not in ("classification", "generation")),
    ("model", "max_length"): st.integers(-5, 7),
    ("model", "max_new_tokens"): st.integers(-5, 0),
    ("model", "target_modules"): st.just([]),
    ("data", "source"): NAMES.filter(lambda s: s not in ("builtin", "glue", "jsonl")),
    ("data", "clients_per_task"): st.integers(-5, 0),
    ("data", "train_per_client"): st.integers(-5, 1),
    ("data", "test_per_client"): st.integers(-5, 0),
    ("train", "lr"): st.floats(max_value=0) | st.just(math.nan),
    ("train", "weight_decay"): st.floats(max_value=-1e-9) | st.just(math.inf),
    ("train", "batch_size"): st.integers(-5, 0),
    ("train", "local_epochs"): st.integers(-5, 0),
    ("train", "device"): NAMES.filter(lambda d: d not in ("cpu", "cuda")),
    ("train", "precision"): NAMES.filter(lambda p: p not in ("auto", "fp32", "bf16", "fp16")),
    ("federation", "algorithm"): NAMES.filter(lambda a: "-" not in a and a not in (
        "local", "fedit", "fedlease")),
    ("federation", "rounds"): st.integers(-5, 0),
    ("federation", "warmup_rounds"): st.integers(2, 50) | st.integers(-5, 0),
    ("federation", "max_experts"): st.integers(-5, 0),
    ("federation", "seed"): st.integers(MAX_SEED + 1, 2**63 - 1) | st.integers(-2**63, -1),
    ("federation", "max_update_norm"): st.floats(max_value=0),
    ("output", "dir"): st.just(""),
}


@st.composite
def malformed_config(draw, base):
    """(TOML text, what the error must name) with exactly one thing wrong."""
    tables = {section: dict(values) for section, values in base.items()}
    kind = draw(st.sampled_from(["type", "range", "unknown key", "unknown section",
                                 "not a table", "not toml"]))
    if kind == "type":
        section, key, hint = draw(st.sampled_from(FIELDS))
        tables.setdefault(section, {})[key] = draw(wrong_type(hint))
        return toml_text(tables), f"{section}.{key}"
    if kind == "range":
        (section, key), values = draw(st.sampled_from(sorted(OUT_OF_RANGE.items())))
        tables.setdefault(section, {})[key] = draw(values)
        return toml_text(tables), f"{section}.{key}"
    if kind == "unknown key":
        section, known, _ = draw(st.sampled_from(FIELDS))
        key = draw(NAMES.filter(lambda k: k not in {f for s, f, _ in FIELDS if s == section}))
        tables.setdefault(section, {})[key] = draw(SCALARS)
        return toml_text(tables), repr(key)
    if kind == "unknown section":
        name = draw(NAMES.filter(lambda n: n not in {s for s, _, _ in FIELDS}))
        tables[name] = {"x": 1}
        return toml_text(tables), repr(name)
    if kind == "not a table":
        section = draw(st.sampled_from(sorted({s for s, _, _ in FIELDS} - set(tables))))
        tables[section] = draw(SCALARS)
        return toml_text(tables), f"[{section}]"
    garbage = draw(st.text(max_size=20).filter(lambda t: not parses(toml_text(tables) + t)))
    return toml_text(tables) + garbage, "not valid TOML"


def parses(text: str) -> bool:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return True


@EXAMPLES
@given(data=st.data())
def test_a_malformed_config_is_a_clean_error(setup, data):
    root, _, out, base = setup
    text, named = data.draw(malformed_config(base))
    path = root / "generated.toml"
    path.write_text(text, encoding="utf-8")
    before = snapshot(out)
    code, err = run_cli(["run", "--config", str(path), "--overwrite",
                         "--quiet"])
    assert code == 2, err
    assert "Traceback" not in err
    assert str(path) in err or named in err, (named, err)
    assert snapshot(out) == before


# -- JSONL lines -------------------------------------------------------------------------------

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | NAMES,
                           lambda inner: st.lists(inner, max_size=2), max_leaves=3)
NOT_A_NON_EMPTY_STRING = (JSON_VALUES.filter(lambda v: not isinstance(v, str))
                          | st.sampled_from(["", "  ", "\t"]))
NOT_A_LABEL = (st.booleans() | st.none() | st.floats(allow_nan=False)
               | st.lists(st.integers(), max_size=2) | st.dictionaries(NAMES, st.integers(),
                                                                       max_size=1))


@st.composite
def malformed_line(draw, good: dict) -> bytes:
    """One line of a client file that cannot be read as a labelled example of its task."""
    kind = draw(st.sampled_from(["not json", "not an object", "text", "label", "int label",
                                 "split", "pair", "task", "twice", "not utf-8"]))
    row = dict(good)
    if kind == "not json":
        text = draw(st.text(max_size=30).filter(lambda t: t.strip() and not is_json(t)
                                                and "\n" not in t and "\r" not in t))
        return text.encode("utf-8")
    if kind == "not an object":
        return json.dumps(draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))).encode()
    if kind == "twice":
        return (json.dumps(row)[:-1] + f', "label": {json.dumps(row["label"])}}}').encode()
    if kind == "not utf-8":
        return json.dumps(row).encode()[:-2] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe9"])) \
            + b'"}'
    field, values = {"text": ("text", NOT_A_NON_EMPTY_STRING),
                     "label": ("label", NOT_A_LABEL),
                     "int label": ("label", st.integers()),  # the task's labels are strings
                     "split": ("split", JSON_VALUES.filter(lambda v: v not in ("train", "test"))),
                     "pair": ("text_pair", NOT_A_NON_EMPTY_STRING),
                     "task": ("task", NOT_A_NON_EMPTY_STRING | NAMES.filter(
                         lambda t: t != row.get("task")))}[kind]
    if draw(st.booleans()) and field in ("text", "label", "split"):
        row.pop(field)
    else:
        row[field] = draw(values)
    return json.dumps(row).encode()


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@EXAMPLES
@given(data=st.data())
def test_a_malformed_jsonl_line_is_a_clean_error_naming_the_file(setup, data):
    root, fed, out, base = setup
    path = fed / data.draw(st.sampled_from(sorted(p.name for p in fed.glob("*.jsonl"))))
    original = path.read_bytes()
    lines = original.splitlines()
    index = data.draw(st.integers(0, len(lines) - 1))
    good = {**json.loads(lines[index]), "task": path.stem.rsplit("-", 1)[0]}
    lines[index] = data.draw(malformed_line(good))
    config = root / "jsonl.toml"
    config.write_text(toml_text(base))
    before = snapshot(out)
    try:
        path.write_bytes(b"\n".join(lines) + b"\n")
        code, err = run_cli(["run", "--config", str(config), "--overwrite",
                             "--quiet"])
    finally:
        path.write_bytes(original)
    assert code == 2, err
    assert "Traceback" not in err
    assert str(path) in err, err
    assert snapshot(out) == before
