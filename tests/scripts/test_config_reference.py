"""docs/configuration.md is what scripts/config_reference.py writes from the schema, and every
schema key is in it and in examples/default.toml (at its default)."""

import re
import sys
from pathlib import Path

from fedlease.config.reference import DATASETS_TABLE, schema_reference
from fedlease.configure import load_config

from ..conftest import load_script

ROOT = Path(__file__).resolve().parents[2]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_the_reference_page_is_up_to_date():
    script = load_script("config_reference", folder="scripts")
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == script.reference_page(), "run: python scripts/config_reference.py"


def test_every_schema_key_is_documented_and_in_the_default_example():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    text = (ROOT / "examples" / "default.toml").read_text(encoding="utf-8")
    example = tomllib.loads(text)
    missing_page, missing_example = [], []
    for key in schema_reference():
        section = page.split(f"\n## {key.section}\n", 1)[-1].split("\n## ", 1)[0]
        if f"| `{key.key}` |" not in section or not key.meaning:
            missing_page.append(key.name)
        if key.section == DATASETS_TABLE:  # a commented-out table: there is none by default
            present = re.search(rf"^# {key.key} = ", text, re.MULTILINE)
        else:
            present = key.key in example.get(key.section, {})
        if not present:
            missing_example.append(key.name)
    assert not missing_page, f"not in docs/configuration.md: {missing_page}"
    assert not missing_example, f"not in examples/default.toml: {missing_example}"
    assert load_config(ROOT / "examples" / "default.toml") == load_config()
