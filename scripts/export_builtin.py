"""Write built-in tasks (src/fedlease/data/builtin) as a CSV, TSV, JSON Lines or parquet file, or a
``datasets`` save_to_disk folder, to try ``data.source = "datasets"`` on real labelled text.

    python scripts/export_builtin.py --tasks news --out runs/data/news.csv
    python scripts/export_builtin.py --tasks sentiment --out runs/data/sentiment.parquet
    python scripts/export_builtin.py --tasks spam --out runs/data/spam_saved --format disk

Columns: ``text``, ``label`` (the label name) and ``task``. The texts keep the licence terms of
the built-in data (DATA.md, section 1): research use.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from fedlease.data.formats import SUFFIXES
from fedlease.data.sources import builtin_dir


def builtin_rows(tasks: list[str]) -> list[dict]:
    manifest = json.loads((builtin_dir() / "manifest.json").read_text())["tasks"]
    rows = []
    for task in tasks:
        if task not in manifest:
            raise SystemExit(f"--tasks: {task!r} is not a built-in task; expected some of "
                             f"{sorted(manifest)}")
        with gzip.open(builtin_dir() / manifest[task]["file"], "rt", encoding="utf-8") as f:
            rows += [{"text": r["text"], "label": r["label"], "task": task}
                     for r in map(json.loads, f)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["news"], help="built-in task names")
    parser.add_argument("--out", required=True, help="output file or folder")
    parser.add_argument("--format", choices=["csv", "tsv", "json", "parquet", "disk"],
                        help="default: from the --out suffix")
    args = parser.parse_args()
    out = Path(args.out)
    format = args.format or SUFFIXES.get(out.suffix.lower())
    if format is None:
        raise SystemExit(f"--out {out}: give --format or one of the suffixes {list(SUFFIXES)}")
    import datasets  # the `data` extra

    table = datasets.Dataset.from_list(builtin_rows(args.tasks))
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "disk":
        table.save_to_disk(str(out))
    elif format == "json":
        table.to_json(str(out), lines=True)
    elif format == "parquet":
        table.to_parquet(str(out))
    else:
        table.to_csv(str(out), index=False, sep="," if format == "csv" else "\t")
    print(f"wrote {len(table)} rows of {', '.join(args.tasks)} to {out} ({format})")


if __name__ == "__main__":
    main()
