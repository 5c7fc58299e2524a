"""Write docs/configuration.md, the reference of every configuration key, from the schema itself
(src/fedlease/config/schema.py: its fields, defaults and the comments beside them) and from the
registries (the names a key may take). Run it after changing the schema; the test suite fails
while the page is out of date (tests/scripts/test_config_reference.py).

    python scripts/config_reference.py              # rewrite docs/configuration.md
    python scripts/config_reference.py --check      # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from fedlease.algorithms import ALGORITHMS
from fedlease.algorithms.aggregation import AGGREGATION_RULES
from fedlease.algorithms.clustering import SIGNALS
from fedlease.attacks import ATTACKS
from fedlease.config.reference import DATASETS_TABLE, KeyReference, schema_reference, section_doc
from fedlease.config.schema import PRECISIONS
from fedlease.data.partitioners import PARTITIONERS
from fedlease.data.sources import SOURCES
from fedlease.model.quantization import QUANTIZATIONS
from fedlease.privacy.accountants import ACCOUNTANTS
from fedlease.tasks import TASKS

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "configuration.md"

# keys whose values are names: of a registry (the built-in entries; `fedlease list KIND` shows
# those of the installed plugins too) or of a fixed list in the schema
ALLOWED = {
    "model.task": TASKS, "data.source": SOURCES, "federation.algorithm": ALGORITHMS,
    "federation.allocation": SIGNALS, "federation.aggregation": AGGREGATION_RULES,
    f"{DATASETS_TABLE}.partitioner": PARTITIONERS, "train.precision": PRECISIONS,
    "model.quantization": QUANTIZATIONS, "attack.kind": ATTACKS,
    "privacy.accountant": ACCOUNTANTS,
}
# keys that only matter under another setting
APPLIES = {
    "model.max_new_tokens": 'model.task = "generation"',
    "model.download": "model.path is a hub id",
    "model.revision": "model.path is a hub id",
    "data.path": "data.source = glue or jsonl",
    "data.tasks": "data.source = builtin, glue or instructions",
    "data.clients_per_task": "data.source = builtin, glue or instructions",
    "data.train_per_client": "data.source = builtin, glue or instructions",
    "data.test_per_client": "data.source = builtin, glue or instructions",
    "data.label_skew": "data.source = builtin or glue",
    "federation.warmup_rounds": "FedLEASE and its ablations",
    "federation.max_experts": "FedLEASE (M_max), IFCA-LoRA (K)",
    "federation.allocation": "FedLEASE and its ablations",
    "federation.embedding_noise": 'federation.allocation = "embedding" or "hybrid"',
    "federation.trim_fraction": 'federation.aggregation = "trimmed-mean"',
    "output.tensorboard": "fedlease[tensorboard] installed",
    "attack.kind": "attack.clients not empty", "attack.scale": 'attack.kind = "scale"',
    "attack.target": 'attack.kind = "forged-embedding"',
    f"{DATASETS_TABLE}.instruction": 'model.task = "generation"',
    f"{DATASETS_TABLE}.input": 'model.task = "generation"',
    f"{DATASETS_TABLE}.output": 'model.task = "generation"',
    f"{DATASETS_TABLE}.text": 'model.task = "classification"',
    f"{DATASETS_TABLE}.text_pair": 'model.task = "classification"',
    f"{DATASETS_TABLE}.label": 'model.task = "classification"',
    f"{DATASETS_TABLE}.labels": 'model.task = "classification"',
    f"{DATASETS_TABLE}.alpha": 'partitioner = "dirichlet"',
    f"{DATASETS_TABLE}.min_partition_size": 'partitioner = "dirichlet"',
    f"{DATASETS_TABLE}.shards_per_partition": 'partitioner = "shard"',
    f"{DATASETS_TABLE}.classes_per_partition": 'partitioner = "pathological"',
}
# the sections that [privacy] and [attack] change: anything else applies always
SECTION_APPLIES = {"privacy": "privacy.epsilon < inf", "attack": "attack.clients not empty",
                   DATASETS_TABLE: 'data.source = "datasets"'}


def shown(value) -> str:
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float) and math.isinf(value):
        return "`inf`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    return f"`{value}`"


def allowed(key: KeyReference) -> str:
    return ", ".join(f"`{name}`" for name in ALLOWED.get(key.name, ()))


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_page() -> str:
    lines = [
        "# Configuration reference",
        "",
        "<!-- written by scripts/config_reference.py from src/fedlease/config/schema.py; "
        "do not edit by hand -->",
        "",
        "Every key of a fedlease TOML config. Every key is optional: a missing key takes its "
        "default (a task may change a default, e.g. `model.task = \"generation\"` sets "
        "`target_modules` and `max_length`). `examples/default.toml` holds every key at its "
        "default; `fedlease config init` writes the same as a commented template, and "
        "`fedlease config check FILE` checks a file (all problems at once) and its data "
        "without training. On the command line, `--set section.key=VALUE` sets any key "
        "(`fedlease run --set train.lr=1e-3`).",
        "",
        "Names of algorithms, tasks, data sources, allocation signals, aggregation rules and "
        "partitioners are those installed: `fedlease list algorithms` (plugins included, "
        "[extending.md](extending.md)).",
        "",
    ]
    sections: dict[str, list[KeyReference]] = {}
    for key in schema_reference():
        sections.setdefault(key.section, []).append(key)
    lines += ["Sections: " + ", ".join(
        f"[`[{'[' if s == DATASETS_TABLE else ''}{s}{']' if s == DATASETS_TABLE else ''}]`]"
        f"(#{s.replace('.', '')})" for s in sections), ""]
    for section, keys in sections.items():
        lines += [f"## {section}", ""]
        if section_doc(section):
            lines += [section_doc(section), ""]
        if section in SECTION_APPLIES:
            lines += [f"Applies when {SECTION_APPLIES[section]}.", ""]
        lines += ["| key | type | default | allowed values | meaning | applies when |",
                  "|---|---|---|---|---|---|"]
        for key in keys:
            lines.append(f"| `{key.key}` | {key.type} | {cell(shown(key.default))} | "
                         f"{allowed(key)} | {cell(key.meaning)} | "
                         f"{cell(APPLIES.get(key.name, ''))} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/configuration.md is not what this script writes")
    args = parser.parse_args()
    page = reference_page()
    if args.check:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != page:
            print(f"{PAGE} is out of date: run python scripts/config_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
