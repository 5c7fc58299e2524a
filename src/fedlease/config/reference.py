"""Every configuration key with its type, default and meaning, read from ``schema.py`` itself
(its dataclass fields and the comments written beside them), so that the commented template of
``fedlease config init`` and docs/configuration.md (``scripts/config_reference.py``) cannot
miss a key or disagree with the code."""

from __future__ import annotations

import ast
import dataclasses
import io
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path

from fedlease.config import schema
from fedlease.config.loading import config_to_dict, toml_value
from fedlease.config.schema import DatasetConfig, RunConfig

DATASETS_TABLE = "data.datasets"  # the [[data.datasets]] tables: a list of DatasetConfig


@dataclass(frozen=True)
class KeyReference:
    section: str  # "model", ..., or "data.datasets" (one [[data.datasets]] table)
    key: str
    type: str  # as annotated: int, float, str, bool, list[str]
    default: object
    meaning: str  # the schema's comments on the field, joined

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def _field_comments() -> dict[tuple[str, str], str]:
    """(class name, field) -> the comment lines right above the field and the comment on its
    line, joined with spaces."""
    source = Path(schema.__file__).read_text(encoding="utf-8")
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above, line = [], item.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            parts = above + ([comments[item.end_lineno]] if item.end_lineno in comments else [])
            out[node.name, item.target.id] = " ".join(parts)
    return out


def _type_name(hint) -> str:
    if typing.get_origin(hint) is list:
        return f"list[{typing.get_args(hint)[0].__name__}]"
    return hint.__name__


def _keys(cls, section: str, comments) -> list[KeyReference]:
    defaults = cls()
    hints = typing.get_type_hints(cls)
    return [KeyReference(section, f.name, _type_name(hints[f.name]), getattr(defaults, f.name),
                         comments.get((cls.__name__, f.name), ""))
            for f in dataclasses.fields(cls)
            if not (f.name == "datasets" and section == "data")]


def schema_reference() -> list[KeyReference]:
    """Every key of every section, in the schema's order; the keys of a ``[[data.datasets]]``
    table after ``[data]``'s."""
    comments = _field_comments()
    hints = typing.get_type_hints(RunConfig)
    keys = []
    for section in dataclasses.fields(RunConfig):
        keys += _keys(hints[section.name], section.name, comments)
        if section.name == "data":
            keys += _keys(DatasetConfig, DATASETS_TABLE, comments)
    return keys


def section_doc(section: str) -> str:
    """The first paragraph of a section's class docstring (``""`` if it has none)."""
    cls = DatasetConfig if section == DATASETS_TABLE else \
        typing.get_type_hints(RunConfig)[section]
    doc = cls.__doc__ or ""
    if doc.startswith(cls.__name__ + "("):  # the dataclass' generated signature: no doc
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def config_template(config: RunConfig, title: str) -> str:
    """``config`` as a TOML file with every key under its meaning (a ``[[data.datasets]]``
    table commented out unless the config has some): what ``fedlease config init`` writes."""
    values = config_to_dict(config)
    lines = [f"# {title}", "# Every key with its meaning; delete what you keep at its default.",
             "# The full reference: docs/configuration.md.", ""]
    by_section: dict[str, list[KeyReference]] = {}
    for key in schema_reference():
        by_section.setdefault(key.section, []).append(key)
    for section, keys in by_section.items():
        doc = section_doc(section)
        if section == DATASETS_TABLE:
            tables = values["data"]["datasets"] or [None]
            for table in tables:
                prefix = "" if table else "# "
                lines += [f"# [[{section}]] tables (data.source = \"datasets\"): one local "
                          "table each, partitioned into clients", f"{prefix}[[{section}]]"]
                for key in keys:
                    value = key.default if table is None else table[key.key]
                    lines += _comment(key.meaning) + [f"{prefix}{key.key} = {toml_value(value)}"]
                lines.append("")
            continue
        lines += _comment(doc)
        lines.append(f"[{section}]")
        for key in keys:
            lines += _comment(key.meaning) + [f"{key.key} = {toml_value(values[section][key.key])}"]
        lines.append("")
    return "\n".join(lines)


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, 96)]
