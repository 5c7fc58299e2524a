"""scripts/privacy_table.py: one row per algorithm and epsilon of a comparison's variants, the
epsilon the runs spent and the allocation's ARI."""

import math

from fedlease.configure import with_overrides
from fedlease.experiments.compare import run_comparison

from ..conftest import load_script


def test_table_rows_per_epsilon(tiny_config, tmp_path):
    config = with_overrides(tiny_config, {"federation": {"rounds": 1, "warmup_rounds": 0,
                                                         "allocation": "embedding"},
                                          "privacy": {"seeded_noise": True}})
    run_comparison(config, ["fedlease", "fedlease+privacy.epsilon=8"], [0], tmp_path,
                   progress=False)
    script = load_script("privacy_table", folder="scripts")
    table, rows = script.privacy_table(tmp_path)
    assert [(r["algorithm"], r["epsilon"]) for r in rows] == [("fedlease", math.inf),
                                                               ("fedlease", 8.0)]
    assert rows[0]["epsilon_spent"] == math.inf and 7.9 < rows[1]["epsilon_spent"] <= 8.0
    assert all(r["ari"] != "-" for r in rows)
    assert "| fedlease | 8 | 1 |" in table
