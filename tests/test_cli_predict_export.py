import json

import pytest

from fedlease.cli import main


def final_accuracy(run_dir, client_id):
    return json.loads((run_dir / "metrics.json").read_text())["rounds"][-1]["clients"][
        client_id]["accuracy"]


def test_predict_on_the_runs_test_split_prints_json_lines_and_the_runs_accuracy(finished_run,
                                                                                capsys):
    run_dir = finished_run("fedlease")
    assert main(["predict", str(run_dir), "--client", "colors-1", "--split", "test"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert len(records) == 8
    assert all(set(r) == {"label", "probabilities", "expected"} for r in records)
    accuracy = sum(r["label"] == r["expected"] for r in records) / len(records)
    assert accuracy == final_accuracy(run_dir, "colors-1")
    assert f"accuracy {accuracy:.4f} on 8 example(s)" in captured.err


def test_predict_one_text_and_a_file(finished_run, tmp_path, capsys):
    run_dir = finished_run("fedit")
    assert main(["predict", str(run_dir), "--client", "animals-0", "--text", "a dog"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["label"] in ("cat", "dog") and "expected" not in record
    examples = tmp_path / "new.jsonl"
    examples.write_text('{"text": "the cat"}\n{"text": "a dog", "label": "dog"}\n')
    assert main(["predict", str(run_dir), "--client", "animals-0", "--input",
                 str(examples)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "on 1 example(s)" in captured.err


@pytest.mark.parametrize("args, message", [
    (["--client", "colors-0"], "give the examples: --input FILE, --text TEXT, or --split test"),
    (["--client", "colors-0", "--text", "x", "--split", "test"], "not of --text"),
    (["--client", "nobody", "--text", "x"], "no client 'nobody'"),
    (["--text", "x"], "give --client ID; the run's clients are"),
    (["--client", "colors-0", "--input", "/no/such.jsonl"], "/no/such.jsonl does not exist"),
])
def test_predict_mistakes_are_one_line_errors(finished_run, capsys, args, message):
    assert main(["predict", str(finished_run("fedit")), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_export_writes_each_format_and_refuses_a_mixture_as_peft(finished_run, tmp_path,
                                                                 capsys):
    run_dir = finished_run("fedlease")
    assert main(["export", str(run_dir), "--client", "colors-0", "--format", "peft",
                 "--out", str(tmp_path / "p")]) == 2
    assert "--format fedlease" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--client", "colors-0", "--format", "fedlease",
                 "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "fedlease_model.json").exists()
    assert main(["export", str(run_dir), "--client", "colors-0", "--warmup", "--format",
                 "merged", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "config.json").exists()
    assert main(["export", str(run_dir), "--expert", "0", "--format", "peft",
                 "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "adapter_model.safetensors").exists()
    # the exported folder predicts like the run folder
    assert main(["predict", str(tmp_path / "f"), "--text", "the red cat"]) == 0
    from_export = capsys.readouterr().out.splitlines()[-1]
    assert main(["predict", str(run_dir), "--client", "colors-0", "--text", "the red cat"]) == 0
    assert capsys.readouterr().out.strip() == from_export


@pytest.mark.parametrize("args, message", [
    (["--format", "peft", "--out", "x"], "choose the model: --client ID"),
    (["--client", "colors-0", "--expert", "0", "--format", "peft", "--out", "x"],
     "choose the model"),
    (["--expert", "0", "--warmup", "--format", "peft", "--out", "x"], "give --client ID"),
])
def test_export_mistakes_are_one_line_errors(finished_run, capsys, args, message):
    assert main(["export", str(finished_run("fedlease")), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_run_tensorboard_flag_sets_the_output_option():
    from fedlease.cli import _overrides, build_parser

    args = build_parser().parse_args(["run", "--tensorboard"])
    assert _overrides(args)["output"]["tensorboard"] is True
    assert "output" not in _overrides(build_parser().parse_args(["run"]))
