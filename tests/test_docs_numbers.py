"""The README and docs/results.md quote the default setup's accuracy from one results file
(docs/compare_default/results.csv), so the figures cannot drift apart again; and the FedProx of
docs/extending.md is the one examples/fedprox_plugin ships."""

import csv
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "compare_default" / "results.csv"
DEFAULT = "fedlease+allocation=embedding"  # the default allocation's row: the default run


def rows() -> dict[str, dict]:
    with RESULTS.open(newline="") as f:
        return {row["algorithm"]: row for row in csv.DictReader(f)}


def percent(row: dict, column: str) -> str:
    return f"{100 * float(row[column]):.1f}"


def spread(row: dict, name: str) -> str:
    return f"{percent(row, name + '_mean')} ± {percent(row, name + '_std')}"


def test_the_readme_quotes_the_default_run_from_the_results_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = rows()[DEFAULT]
    section = " ".join(readme.split("## The full default run", 1)[1].split("\n## ", 1)[0].split())
    assert f"**{spread(row, 'average')}%**" in section
    for task in ("sentiment", "news", "spam", "uncertainty"):
        assert f"{task} {percent(row, task + '_mean')}" in section, task
    # every accuracy-like figure of the README is one of the results file's
    quoted = set(re.findall(r"(?<![\d.])([5-9]\d\.\d)(?![\d.])", readme))
    known = {percent(r, column) for r in rows().values() for column in r
             if column.endswith(("_mean", "_std"))}
    assert quoted <= known, f"figures not in {RESULTS.name}: {sorted(quoted - known)}"


def test_results_md_quotes_the_same_figures():
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    table = rows()
    embedding, lora_b = table[DEFAULT], table["fedlease"]
    assert (f"| FedLEASE accuracy, `embedding` / `lora-b` | {spread(embedding, 'average')} / "
            f"{spread(lora_b, 'average')} |") in page
    assert f"| 1 | {DEFAULT} | {spread(embedding, 'sentiment')} |" in page


def test_extending_md_shows_the_fedprox_the_plugin_ships():
    page = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    plugin = (ROOT / "examples" / "fedprox_plugin" / "fedlease_fedprox.py").read_text()

    def code(text):  # lines of code, comments and blank lines aside
        return [line.split("  #")[0] for line in text.splitlines()
                if line.strip() and not line.strip().startswith(("#", '"""'))]

    shown = page.split("## A complete algorithm: FedProx", 1)[1].split("```python", 1)[1]
    shown = shown.split("```", 1)[0]
    shipped = code(plugin)
    assert all(line in shipped for line in code(shown)), "docs/extending.md differs from the plugin"


def test_the_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = readme.split("## Documentation", 1)[1]
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert [page for page in pages + ["DATA.md"] if f"]({page})" not in index] == []
