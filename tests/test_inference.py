import json
import math

import pytest
import torch

import fedlease
from fedlease.data.federation import DataError
from fedlease.inference import file_inputs, run_split_inputs, score, text_inputs
from fedlease.saved_models import ModelFileError


def final_metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())["rounds"][-1]["clients"]


@pytest.mark.parametrize("algorithm", ["fedlease", "feddpa", "ifca-lora"])
def test_test_split_predictions_reproduce_the_runs_final_evaluation(finished_run, algorithm):
    run_dir = finished_run(algorithm)
    for client_id, metrics in final_metrics(run_dir).items():
        model = fedlease.load_client_model(run_dir, client_id)
        inputs = run_split_inputs(model, run_dir, "test")
        records = model.run(inputs)
        assert score(records, "classification")["accuracy"] == metrics["accuracy"]
        # the probabilities are the run's: their mean negative log-likelihood is its test loss
        nll = [-math.log(r["probabilities"][r["expected"]]) for r in records]
        assert sum(nll) / len(nll) == pytest.approx(metrics["loss"], abs=1e-5)
        assert model.evaluate(inputs.examples)["accuracy"] == metrics["accuracy"]


def test_predict_gives_a_label_and_probabilities_per_text(finished_run):
    model = fedlease.load_client_model(finished_run("fedlease"), "colors-0")
    assert model.labels == ["blue", "red"]
    out = model.predict(["the red cat", "a blue dog", "the"])
    assert len(out) == 3
    for record in out:
        assert set(record["probabilities"]) == {"blue", "red"}
        assert sum(record["probabilities"].values()) == pytest.approx(1.0)
        assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)


def test_a_client_file_with_splits_reads_like_the_runs_test_split(finished_run):
    run_dir = finished_run("fedit")
    model = fedlease.load_client_model(run_dir, "animals-1")
    client_file = run_dir.parent / "data" / "animals-1.jsonl"
    from_file = model.run(file_inputs(model, client_file, "test"))
    from_run = model.run(run_split_inputs(model, run_dir, "test"))
    assert from_file == from_run
    assert len(file_inputs(model, client_file).examples) == 24 + 8  # no split: every line


def test_input_errors_name_the_line_and_the_labels(finished_run, tmp_path):
    model = fedlease.load_client_model(finished_run("fedit"), "colors-0")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "red cat"}\n{"text": "x", "label": "green"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: label 'green' is not one of client "
                                        r"'colors-0''s labels \['blue', 'red'\]"):
        file_inputs(model, bad)
    bad.write_text('{"txt": "red cat"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: \"text\" must be a non-empty string"):
        file_inputs(model, bad)
    unlabelled = tmp_path / "new.jsonl"
    unlabelled.write_text('{"text": "red cat"}\n')
    records = model.run(file_inputs(model, unlabelled))
    assert "expected" not in records[0] and score(records, "classification") == {}


def test_unknown_client_and_folder_errors(finished_run, tmp_path):
    with pytest.raises(ModelFileError, match="no client 'nobody'; the run's clients are "
                                             "animals-0, animals-1, colors-0, colors-1"):
        fedlease.load_client_model(finished_run("fedit"), "nobody")
    with pytest.raises(ModelFileError, match="no run.json"):
        fedlease.load_client_model(tmp_path, "colors-0")


def test_generation_answers_reproduce_the_runs_final_scores(finished_run):
    run_dir = finished_run("fedit", "generation")
    for client_id, metrics in final_metrics(run_dir).items():
        model = fedlease.load_client_model(run_dir, client_id)
        records = model.run(run_split_inputs(model, run_dir, "test"))
        scores = score(records, "generation")
        assert scores["rouge_l"] == pytest.approx(metrics["rouge_l"], abs=1e-12)
        assert scores["exact_match"] == metrics["exact_match"]
    answers = model.generate(["which animal is named ?"], ["the cat is here"])
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert model.run(text_inputs(model, "which color is named ?"))[0].keys() == {"answer"}
    with pytest.raises(ModelFileError, match="predict\\(\\) needs a classification model"):
        model.predict(["x"])


def test_the_model_is_the_clients_own(finished_run):
    """Two clients of different tasks get different probabilities for the same text."""
    run_dir = finished_run("local")
    a = fedlease.load_client_model(run_dir, "colors-0").predict(["the red cat"])
    b = fedlease.load_client_model(run_dir, "animals-0").predict(["the red cat"])
    assert set(a[0]["probabilities"]) == {"blue", "red"}
    assert set(b[0]["probabilities"]) == {"cat", "dog"}
    assert not torch.isnan(torch.tensor(list(a[0]["probabilities"].values()))).any()
