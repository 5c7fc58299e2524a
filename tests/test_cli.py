import json

import pytest

from fedlease.cli import main


def write_config(tmp_path, tiny_config_dict):
    lines = []
    for section, values in tiny_config_dict.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_run_prints_per_client_table(tiny_model_dir, tiny_federation, tmp_path, capsys):
    path = write_config(tmp_path, {
        "model": {"path": str(tiny_model_dir), "max_length": 16},
        "data": {"source": "jsonl", "path": str(tiny_federation)},
        "federation": {"rounds": 2, "warmup_rounds": 1},
    })
    out = tmp_path / "out"
    assert main(["run", "--config", str(path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for client in ("colors-0", "colors-1", "animals-0", "animals-1"):
        assert client in printed
    assert "adjusted Rand index vs tasks" in printed and "mean overall" in printed
    assert (out / "summary.txt").exists()


def test_compare_takes_the_run_flags_and_prints_the_table(tiny_model_dir, tiny_federation,
                                                          tmp_path, capsys):
    path = write_config(tmp_path, {
        "model": {"path": str(tiny_model_dir), "max_length": 16},
        "data": {"source": "jsonl", "path": "/no/such/folder"},
        "federation": {"warmup_rounds": 1},
    })
    out = tmp_path / "compare"
    assert main(["compare", "--config", str(path), "--algorithms", "local,fedit",
                 "--num-seeds", "1", "--rounds", "2", "--precision", "fp32",
                 "--data-path", str(tiny_federation),
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| local |" in printed and "| fedit |" in printed
    assert json.loads((out / "fedit" / "seed-0" / "metrics.json").read_text())["rounds"][1]


def test_config_error_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[federation]\nmax_experts = 0\n")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "federation.max_experts = 0: expected an integer >= 1" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_default_run_on_real_model_clusters_tasks(tmp_path, capsys):
    """The README's default command on the real all-MiniLM-L6-v2 and the built-in data,
    shortened to the warm-up plus one mixture round."""
    out = tmp_path / "default"
    assert main(["run", "--rounds", "5", "--out", str(out), "--quiet"]) == 0
    clustering = json.loads((out / "clustering.json").read_text())
    assert clustering["num_experts"] >= 2
    printed = capsys.readouterr().out
    assert "sentiment-0" in printed and "uncertainty-3" in printed
