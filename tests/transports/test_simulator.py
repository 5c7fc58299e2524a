import json

import pytest
import torch
from safetensors.torch import load_file

from fedlease.transports.simulator import run_simulation


def test_fedlease_runs_end_to_end_and_writes_outputs(tiny_config, tmp_path):
    out = tmp_path / "run"
    result = run_simulation(tiny_config, out, progress=False)
    assert len(result.history) == 3
    assert set(result.final) == {"colors-0", "colors-1", "animals-0", "animals-1"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    clustering = json.loads((out / "clustering.json").read_text())
    assert set(clustering["assignment"]) == set(result.final)
    assert len(clustering["distance"]) == 4
    for name in ("accuracy_per_round", "dendrogram", "distance_heatmap", "silhouette"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    tensors = load_file(out / "adapters" / "colors-0.safetensors")
    assert "head.weight" in tensors
    K = clustering["num_experts"]
    assert all(v.shape[0] == K for k, v in tensors.items() if k.endswith("lora_A"))
    assert "adjusted Rand index" in (out / "summary.txt").read_text()
    # the saved adapters are the model each client was last evaluated with
    from fedlease.model.lora import AdapterLayout
    from fedlease.tasks.loading import build_trainers, load_clients

    trainer = build_trainers(tiny_config, load_clients(tiny_config))["colors-0"]
    layout = AdapterLayout.fedlease(K, clustering["assignment"]["colors-0"])
    assert trainer.evaluate(dict(tensors), layout)["accuracy"] == \
        result.final["colors-0"]["accuracy"]


def test_same_seed_gives_same_metrics(tiny_config):
    a = run_simulation(tiny_config, None, progress=False)
    b = run_simulation(tiny_config, None, progress=False)
    strip = [{c: {k: v for k, v in m.items() if "seconds" not in k}
              for c, m in r["clients"].items()} for r in a.history]
    assert strip == [{c: {k: v for k, v in m.items() if "seconds" not in k}
                      for c, m in r["clients"].items()} for r in b.history]
    assert a.report["assignment"] == b.report["assignment"]


def test_base_model_is_loaded_once_for_all_clients(tiny_config, monkeypatch):
    import transformers

    calls = []
    original = transformers.AutoModel.from_pretrained

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", counting)
    run_simulation(tiny_config, None, progress=False)
    assert len(calls) == 1


def test_unwritable_output_folder_fails_before_training(tiny_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write to the output folder"):
        run_simulation(tiny_config, blocker / "sub", progress=False)


def test_a_bad_upload_is_rejected_and_the_run_goes_on(tiny_config, tmp_path, monkeypatch):
    """colors-1 uploads NaN in round 2: the round aggregates the others, records the rejection,
    and every expert stays finite."""
    from fedlease.algorithms.base import AlgorithmClient

    honest = AlgorithmClient.fit.__func__

    def poisoned(cls, ins, local_state, trainer):
        reply, state = honest(cls, ins, local_state, trainer)
        if trainer.data.client_id == "colors-1" and ins.upload:
            reply.arrays = {k: torch.full_like(v, float("nan")) for k, v in reply.arrays.items()}
        return reply, state

    monkeypatch.setattr(AlgorithmClient, "fit", classmethod(poisoned))
    tiny_config.federation.rounds = 2
    result = run_simulation(tiny_config, tmp_path / "run", progress=False)
    assert [list(r["rejected"]) for r in result.history] == [["colors-1"], ["colors-1"]]
    assert "NaN" in result.history[1]["rejected"]["colors-1"]
    assert "train_loss" not in result.history[1]["clients"]["colors-1"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "colors-1" in saved["rounds"][1]["rejected"]
    final = load_file(tmp_path / "run" / "adapters" / "animals-0.safetensors")
    assert all(torch.isfinite(v).all() for v in final.values())
