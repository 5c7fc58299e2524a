import json

import pytest

from fedlease.cli import main

from .conftest import write_federation


@pytest.fixture(scope="module")
def newcomer_data(tmp_path_factory):
    """One client of the colors task that was not in the federation (another seed)."""
    folder = write_federation(tmp_path_factory.mktemp("newcomer"), clients_per_task=1, seed=7)
    (folder / "animals-0.jsonl").unlink()
    (folder / "colors-0.jsonl").rename(folder / "colors-new.jsonl")
    (folder / "manifest.json").write_text(json.dumps({"clients": {"colors-new": "colors"}}))
    return folder


@pytest.mark.parametrize("algorithm", ["fedlease", "fedit", "ifca-lora", "local"])
def test_join_then_predict(finished_run, newcomer_data, tmp_path, capsys, algorithm):
    out = tmp_path / "joined"
    assert main(["join", str(finished_run(algorithm)), "--data", str(newcomer_data),
                 "--steps", "3", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "colors-new joined" in said and "on its test split: accuracy" in said
    description = json.loads((out / "fedlease_model.json").read_text())
    assert description["algorithm"] == algorithm and description["client"]["id"] == "colors-new"
    if algorithm == "fedlease":  # placed in a cluster: trains that expert behind its router
        layout = description["client"]["layout"]
        assert layout["router_slots"] and layout["trainable"][0] in layout["router_slots"]
    assert main(["predict", str(out), "--text", "the red cat"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["label"] in ("red", "blue")


def test_join_then_export(finished_run, newcomer_data, tmp_path, capsys):
    out = tmp_path / "joined"
    assert main(["join", str(finished_run("fedit")), "--data", str(newcomer_data),
                 "--steps", "2", "--out", str(out)]) == 0
    assert main(["export", str(out), "--format", "peft", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "adapter_model.safetensors").exists()
    assert (tmp_path / "p" / "classifier.safetensors").exists()


def test_join_with_zero_steps_starts_from_what_the_server_sends(finished_run, newcomer_data,
                                                                tmp_path):
    """FedIT's newcomer at 0 steps holds the global LoRA as the server saved it."""
    from safetensors.torch import load_file

    run_dir = finished_run("fedit")
    assert main(["join", str(run_dir), "--data", str(newcomer_data), "--steps", "0",
                 "--out", str(tmp_path / "j")]) == 0
    joined = load_file(tmp_path / "j" / "model.safetensors")
    server = load_file(run_dir / "adapters" / "server.safetensors")
    assert server and all(joined[key].equal(value) for key, value in server.items())


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such"], "expected a folder of per-client JSONL files"),
    (["--steps", "-1"], "--steps -1"),
])
def test_join_mistakes_are_one_line_errors(finished_run, newcomer_data, tmp_path, capsys,
                                           args, message):
    base = ["join", str(finished_run("fedit")), "--out", str(tmp_path / "j")]
    if "--data" not in args:
        base += ["--data", str(newcomer_data)]
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
