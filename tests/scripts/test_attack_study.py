"""scripts/attack_study.py: a cell is a run of the study config with the cell's settings, and
the table averages the final accuracy of the clients the study never makes attackers."""

import json
from statistics import mean

from fedlease.config import dump_toml
from fedlease.configure import load_config

from ..conftest import load_script


def test_cells_run_the_asked_settings_and_the_table_averages_the_honest(tiny_config,
                                                                        tmp_path):
    study = load_script("attack_study", folder="scripts")
    tiny_config.federation.rounds = 2
    tiny_config.attack.clients = ["colors-0", "animals-1"]
    tiny_config.attack.target = "animals-0"
    config_file = tmp_path / "attack.toml"
    config_file.write_text(dump_toml(tiny_config))
    out = tmp_path / "study"
    done = [("fedlease", "median", "none", 0, 0), ("fedlease", "median", "sign-flip", 1, 0)]
    for cell in done:
        assert study.run_cell(str(config_file), str(out), cell) > 0
    assert study.run_cell(str(config_file), str(out), done[1]) == 0.0  # finished: skipped

    folder = study.cell_folder(out, *done[1])
    config = load_config(folder / "config.toml")
    assert config.federation.aggregation == "median"
    assert config.attack.clients == ["colors-0"] and config.attack.kind == "sign-flip"
    final = json.loads((folder / "metrics.json").read_text())["rounds"][-1]["clients"]

    rows = study.table(out, [0], str(config_file))
    assert set(rows) == {"fedlease|none|0", "fedlease|sign-flip|1"}
    cell = rows["fedlease|sign-flip|1"]["median"]
    # animals-1 is honest in this cell, but an attacker in others: left out of every cell
    assert cell["honest"] == [mean(final[c]["accuracy"] for c in ("colors-1", "animals-0"))]
    assert cell["attacked_task"] == [final["colors-1"]["accuracy"]]  # the attackers' task
    assert "| fedlease | sign-flip | 1 |" in study.markdown(rows, "honest")
    assert len(study.cells([0, 1])) == 2 * (3 * (1 + 4 * 2) + 3 * (1 + 1 * 2))
