"""Checks on the shipped built-in federation files (src/fedlease/data/builtin).

These read the files directly through manifest.json and need neither torch nor
an import of fedlease. The files are made by scripts/build_builtin_data.py; see
DATA.md for their sources and licences.
"""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

import pytest

BUILTIN = Path(__file__).resolve().parents[2] / "src" / "fedlease" / "data" / "builtin"
TASKS = ("sentiment", "news", "spam", "uncertainty")
EXPECTED_LABELS = {
    "sentiment": ["negative", "positive"],
    "news": ["business", "entertainment", "politics", "sports", "tech"],
    "spam": ["ham", "spam"],
    "uncertainty": ["certain", "uncertain"],
}
EXPECTED_PER_LABEL = {"sentiment": 600, "news": 240, "spam": 600, "uncertainty": 600}
MAX_CHARS = 400


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((BUILTIN / "manifest.json").read_text(encoding="utf-8"))


def _rows(manifest: dict, task: str) -> list[dict]:
    path = BUILTIN / manifest["tasks"][task]["file"]
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_every_task_is_listed(manifest):
    assert sorted(manifest["tasks"]) == sorted(TASKS)
    for task in TASKS:
        entry = manifest["tasks"][task]
        assert entry["file"] == f"{task}.jsonl.gz"
        assert (BUILTIN / entry["file"]).is_file()
        assert entry["source"].strip()


def test_total_size_is_small():
    total = sum(p.stat().st_size for p in BUILTIN.iterdir() if p.is_file())
    assert total < 2 * 1024 * 1024


@pytest.mark.parametrize("task", TASKS)
def test_rows_are_text_label_pairs(manifest, task):
    rows = _rows(manifest, task)
    assert len(rows) == manifest["tasks"][task]["num_examples"]
    for row in rows:
        assert set(row) == {"text", "label"}
        assert isinstance(row["text"], str) and isinstance(row["label"], str)


@pytest.mark.parametrize("task", TASKS)
def test_labels_as_listed_and_balanced(manifest, task):
    labels = manifest["tasks"][task]["labels"]
    assert labels == sorted(labels), "labels must be listed alphabetically"
    assert labels == EXPECTED_LABELS[task]
    counts = collections.Counter(row["label"] for row in _rows(manifest, task))
    assert sorted(counts) == labels
    assert set(counts.values()) == {EXPECTED_PER_LABEL[task]}


@pytest.mark.parametrize("task", TASKS)
def test_texts_clean_unique_and_short(manifest, task):
    cap = manifest.get("max_chars", MAX_CHARS)
    assert cap <= MAX_CHARS
    seen = set()
    for row in _rows(manifest, task):
        text = row["text"]
        assert text.strip(), "empty text"
        assert len(text) <= cap, f"{task}: text of {len(text)} chars"
        assert text == " ".join(text.split()), "whitespace is not collapsed"
        assert "\ufffd" not in text, "undecodable characters"
        key = " ".join(text.casefold().split())
        assert key not in seen, f"{task}: duplicate text {text[:60]!r}"
        seen.add(key)


@pytest.mark.parametrize("task", TASKS)
def test_files_are_reproducible_gzip(manifest, task):
    # gzip header: magic, method, flags, 4-byte mtime; the build writes mtime=0
    # and no file name, so a rebuild gives identical bytes
    head = (BUILTIN / manifest["tasks"][task]["file"]).read_bytes()[:10]
    assert head[:2] == b"\x1f\x8b"
    assert head[4:8] == b"\x00\x00\x00\x00"
    assert head[3] & 0x08 == 0, "file name stored in the gzip header"
