"""scripts/build_instruction_data.py: the rules that turn raw text into instruction examples."""

import gzip
import os
import random
from pathlib import Path

import pytest

from ..conftest import load_script

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def build(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # it imports build_builtin_data's helpers
    return load_script("build_instruction_data", folder="scripts")


def test_subject_loses_list_tags_and_reply_prefixes_only(build):
    assert build.clean_subject("[SAtalk] Re: [ILUG] Fwd: New rules") == "New rules"
    assert build.clean_subject("Klez: The Virus") == "Klez: The Virus"
    assert build.clean_subject("[IRR]") == "[IRR]"  # nothing would be left: kept as it is


def test_misspell_replaces_known_words_keeping_the_capital(build):
    table = {"the": ["teh"], "system": ["sysem"], "their": ["thier"], "when": ["wen"]}
    right = "The system and their data, when done."
    for seed in range(5):
        out = build.misspell(right, table, random.Random(seed))
        changed = [(a, b) for a, b in zip(right.split(), out.split(), strict=True) if a != b]
        assert len(changed) == 3  # SPELLING_MAX_ERRORS of the 4 known words
        expected = {"The": "Teh", "system": "sysem", "their": "thier", "when": "wen"}
        assert all(expected.get(a, a) == b for a, b in changed)
    assert build.misspell("Nothing known here.", table, random.Random(0)) == "Nothing known here."


def test_reason_names_the_strongest_words_of_the_label_in_reading_order(build):
    lexicon = {"good": 1.9, "great": 3.1, "bad": -2.5, "fine": 0.8, "superb": 2.9, "nice": 1.8}
    sentence = "A good, nice and superb film, not bad, great and fine."
    assert build.reason(sentence, "positive", lexicon) == "good, superb, great"
    assert build.reason(sentence, "negative", lexicon) == "bad"
    assert build.reason("Plain words only.", "positive", lexicon) == ""


def test_dedup_drops_repeated_inputs_and_on_request_repeated_outputs(build):
    rows = [("Body one", "Title"), ("body  ONE", "Other"), ("Body two", "title")]
    assert build.dedup_rows(rows, unique_outputs=False) == ([rows[0], rows[2]], 1)
    assert build.dedup_rows(rows, unique_outputs=True) == ([rows[0]], 2)


@pytest.mark.slow
@pytest.mark.skipif(not Path(os.environ.get("FEDLEASE_RAW", "/tmp/raw")).is_dir(),
                    reason="the raw archives (DATA.md 1.1) are not in $FEDLEASE_RAW or /tmp/raw")
def test_rebuild_gives_the_shipped_files(build, tmp_path):
    build.main(["--raw", os.environ.get("FEDLEASE_RAW", "/tmp/raw"), "--out", str(tmp_path)])
    shipped = SCRIPTS.parent / "src" / "fedlease" / "data" / "builtin" / "instructions"
    for path in sorted(shipped.glob("*.jsonl.gz")):
        assert gzip.decompress((tmp_path / path.name).read_bytes()) == \
            gzip.decompress(path.read_bytes()), path.name
    assert (tmp_path / "manifest.json").read_text() == (shipped / "manifest.json").read_text()
