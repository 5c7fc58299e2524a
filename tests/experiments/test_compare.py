"""``fedlease compare`` on the tiny model: every algorithm end to end, the table, resuming."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from fedlease.algorithms import ALGORITHMS
from fedlease.config import config_to_dict
from fedlease.configure import load_config
from fedlease.errors import ConfigError
from fedlease.experiments import compare
from fedlease.experiments.compare import parse_algorithms, run_comparison

CLIENTS = ["colors-0", "colors-1", "animals-0", "animals-1"]


@pytest.fixture(scope="module")
def compared(tiny_model_dir, module_tiny_federation, tmp_path_factory):
    """All algorithms, one seed, two rounds (one of warm-up for the FedLEASE family)."""
    root = tmp_path_factory.mktemp("compare")
    config = load_config(overrides={
        "model": {"path": str(tiny_model_dir), "max_length": 16},
        "data": {"source": "jsonl", "path": str(module_tiny_federation)},
        "train": {"batch_size": 8, "lr": 1e-2},
        "federation": {"rounds": 2, "warmup_rounds": 1, "max_experts": 3},
    })
    out = root / "out"
    # one thread: the tiny model gains nothing from more, and on a busy CPU idle threads
    # spinning for work made this fixture several times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = run_comparison(config, list(ALGORITHMS), [0], out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return config, out, rows


def adapters(out, algorithm):
    return {cid: load_file(out / algorithm / "seed-0" / "adapters" / f"{cid}.safetensors")
            for cid in CLIENTS}


def test_every_algorithm_runs_and_gets_a_row(compared):
    _, out, rows = compared
    assert sorted(row["algorithm"] for row in rows) == sorted(ALGORITHMS)
    assert [row["rank"] for row in rows] == list(range(1, len(ALGORITHMS) + 1))
    averages = [row["score"]["overall"][0] for row in rows]
    assert averages == sorted(averages, reverse=True)
    assert len(set(averages)) > 1  # the tiny model learns: a ranking, not a tie
    for row in rows:  # each score is the mean over tasks of the run's final accuracies
        metrics = json.loads((out / row["algorithm"] / "seed-0" / "metrics.json").read_text())
        final = metrics["rounds"][-1]["clients"]
        by_task = [[final[c]["accuracy"] for c in CLIENTS if c.startswith(task)]
                   for task in ("colors", "animals")]
        assert row["score"]["overall"][0] == pytest.approx(
            sum(sum(v) / len(v) for v in by_task) / 2)
    by_name = {row["algorithm"]: row for row in rows}
    assert by_name["local"]["upload_bytes"] == 0
    # ffa-lora trains B only: fewer trainable parameters than fedit, and half its upload
    assert by_name["ffa-lora"]["trainable_params"] < by_name["fedit"]["trainable_params"]
    assert by_name["ffa-lora"]["upload_bytes"] == by_name["fedit"]["upload_bytes"] / 2
    assert by_name["feddpa"]["trainable_params"] > by_name["fedit"]["trainable_params"]


def test_download_and_upload_are_counted_for_every_algorithm(compared):
    # what travels, per client: fedit gets its LoRA down to train and again to evaluate each
    # round, and sends it up once; local gets the initial LoRA once and sends nothing
    _, out, rows = compared
    by_name = {row["algorithm"]: row for row in rows}
    fedit, local = by_name["fedit"], by_name["local"]
    assert fedit["upload_bytes"] > 0
    assert fedit["download_per_client_round"] == pytest.approx(2 * fedit["upload_bytes"])
    assert local["upload_per_client"] == 0
    assert local["download_per_client"] == pytest.approx(fedit["download_per_client"] / 4)
    # FedLEASE uploads its embedding before round 1, so more than its LoRA traffic alone
    assert by_name["fedlease"]["upload_per_client"] > 0
    text = (out / "results.md").read_text()
    assert "download B/client/round" in text and "upload MB/client/run" in text
    assert (out / "accuracy_vs_bytes.png").stat().st_size > 1000


def test_results_table_csv_and_plot_are_written(compared):
    _, out, rows = compared
    text = (out / "results.md").read_text()
    assert all(f"| {name} |" in text for name in ALGORITHMS)
    assert "fedlease ranks" in text
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["algorithm"] for r in table] == [row["algorithm"] for row in rows]
    assert {"colors_mean", "animals_std", "average_mean", "upload_bytes_per_client_round",
            "trainable_params_per_client", "wall_seconds"} <= set(table[0])
    assert (out / "accuracy_per_round.png").stat().st_size > 1000


def test_final_adapters_follow_each_algorithms_sharing_rule(compared):
    config, out, _ = compared
    key = next(k for k in adapters(out, "fedit")["colors-0"] if k.endswith("lora_A"))
    bkey = key.replace("lora_A", "lora_B")
    fedit = adapters(out, "fedit")
    assert all(torch.equal(fedit[c][bkey], fedit["colors-0"][bkey]) for c in CLIENTS)
    ffa = adapters(out, "ffa-lora")
    # A never trained: every client's is still the common seeded init
    shapes = {k[len("adapter."):-len(".lora_A")]: (v.shape[2], ffa["colors-0"][
        k.replace("lora_A", "lora_B")].shape[1]) for k, v in ffa["colors-0"].items()
        if k.endswith("lora_A")}
    init = ALGORITHMS["ffa-lora"](config, [], shapes).initial_state()
    assert all(torch.equal(ffa[c][key], init[key]) for c in CLIENTS)
    fedsa = adapters(out, "fedsa-lora")
    assert all(torch.equal(fedsa[c][key], fedsa["colors-0"][key]) for c in CLIENTS)
    assert not torch.equal(fedsa["colors-0"][bkey], fedsa["animals-0"][bkey])
    local = adapters(out, "local")
    assert not torch.equal(local["colors-0"][bkey], local["animals-0"][bkey])
    dpa = adapters(out, "feddpa")
    assert torch.equal(dpa["colors-0"][bkey][0], dpa["animals-0"][bkey][0])  # global
    assert not torch.equal(dpa["colors-0"][bkey][1], dpa["animals-0"][bkey][1])  # personal


def test_a_second_call_runs_nothing_and_rewrites_the_table(compared, monkeypatch):
    config, out, rows = compared

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished (algorithm, seed) pair was run again")

    monkeypatch.setattr(compare, "run_simulation", must_not_run)
    (out / "results.md").unlink()
    again = run_comparison(config, list(ALGORITHMS), [0], out, progress=False)
    assert [r["algorithm"] for r in again] == [r["algorithm"] for r in rows]
    assert (out / "results.md").is_file()


def test_unfinished_pair_is_run_again(compared, monkeypatch):
    config, out, _ = compared
    (out / "local" / "seed-0" / "result.json").unlink()
    ran = []
    original = compare.run_simulation

    def counting(cfg, folder, progress, **kwargs):
        ran.append((cfg.federation.algorithm, cfg.federation.seed))
        return original(cfg, folder, progress=progress, **kwargs)

    monkeypatch.setattr(compare, "run_simulation", counting)
    run_comparison(config, ["local", "fedit"], [0], out, progress=False)
    assert ran == [("local", 0)]


def test_a_pair_interrupted_mid_run_continues_from_its_checkpoint(compared, tmp_path,
                                                                   monkeypatch):
    """Killed after round 1 of 2, the pair resumes at round 2 and ends with the metrics of the
    uninterrupted run."""
    from fedlease.federation import engine

    config, out, _ = compared
    saved = engine.save_checkpoint

    def save_then_die(folder, checkpoint, cfg):
        saved(folder, checkpoint, cfg)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(config, ["fedlease"], [0], tmp_path, progress=False)
    monkeypatch.setattr(engine, "save_checkpoint", saved)
    resumed = []
    original = compare.run_simulation

    def recording(cfg, folder, progress, **kwargs):
        resumed.append(kwargs.get("resume", False))
        return original(cfg, folder, progress=progress, **kwargs)

    monkeypatch.setattr(compare, "run_simulation", recording)
    run_comparison(config, ["fedlease"], [0], tmp_path, progress=False)
    assert resumed == [True]
    metrics = [json.loads((folder / "fedlease" / "seed-0" / "metrics.json").read_text())
               for folder in (out, tmp_path)]
    for uninterrupted, continued in zip(*(m["rounds"] for m in metrics), strict=True):
        for cid, values in uninterrupted["clients"].items():
            assert continued["clients"][cid]["accuracy"] == values["accuracy"]
            assert continued["clients"][cid]["loss"] == values["loss"]
    result = json.loads((tmp_path / "fedlease" / "seed-0" / "result.json").read_text())
    assert result["wall_seconds"] >= sum(r["seconds"] for r in metrics[1]["rounds"])


def test_a_pair_with_a_damaged_checkpoint_runs_again_from_the_start(compared, tmp_path,
                                                                     monkeypatch, capsys):
    config, out, _ = compared
    run_comparison(config, ["local"], [0], tmp_path, progress=False)
    folder = tmp_path / "local" / "seed-0"
    (folder / "result.json").unlink()
    (folder / "checkpoint" / "checkpoint.json").write_text("{")
    calls = []
    original = compare.run_simulation

    def recording(cfg, folder, progress, **kwargs):
        calls.append(kwargs)
        return original(cfg, folder, progress=progress, **kwargs)

    monkeypatch.setattr(compare, "run_simulation", recording)
    run_comparison(config, ["local"], [0], tmp_path, progress=False)
    assert calls == [{"overwrite": True}]
    assert "cannot continue from its checkpoint" in capsys.readouterr().err
    assert (folder / "result.json").is_file()


def test_algorithm_list_is_checked():
    assert parse_algorithms("all") == list(ALGORITHMS)
    assert parse_algorithms("fedit, local,fedit") == ["fedit", "local"]
    with pytest.raises(ConfigError, match="fedavg"):
        parse_algorithms("fedit,fedavg")


def test_ranking_note_names_the_gap_to_the_best_other_algorithm():
    from fedlease.reporting.comparison import ranking_note

    def row(name, acc, rank):
        return {"algorithm": name, "rank": rank, "score": {"overall": (acc, 0.0)}}

    rows = [row("fedit", 0.80, 1), row("fedlease", 0.75, 2), row("local", 0.70, 3)]
    assert ranking_note(rows, "accuracy").startswith(
        "fedlease ranks 2 of 3 by average test accuracy, 5.0 points below the best other "
        "algorithm (fedit).")
    rows = [row("fedlease", 0.80, 1), row("fedit", 0.80, 2)]
    assert "level with the best other algorithm (fedit)" in ranking_note(rows, "accuracy")


def test_ranking_note_weighs_the_lead_over_the_best_baseline_against_the_seed_spread():
    from fedlease.reporting.comparison import ranking_note

    def row(name, by_seed, rank):
        values = list(by_seed.values())
        return {"algorithm": name, "rank": rank, "overall_by_seed": by_seed,
                "score": {"overall": (sum(values) / len(values), 0.0)}}

    steady = [row("fedlease-no-cluster", {0: 0.84, 1: 0.86, 2: 0.85}, 1),
              row("fedlease", {0: 0.83, 1: 0.85, 2: 0.84}, 2),
              row("fedit", {0: 0.80, 1: 0.82, 2: 0.81}, 3)]
    note = ranking_note(steady, "accuracy")
    assert "1.0 points below the best other algorithm (fedlease-no-cluster)" in note
    assert "3.0 points above the best baseline (fedit)" in note
    assert "+3.0 ± 0.0 points over 3 seeds: larger than the seed spread" in note
    noisy = [row("fedlease", {0: 0.90, 1: 0.80, 2: 0.85}, 1),
             row("fedit", {0: 0.80, 1: 0.86, 2: 0.84}, 2)]
    assert "+1.7 ± 8.0 points over 3 seeds: within the seed spread" in ranking_note(
        noisy, "accuracy")
    one = [row("fedlease", {0: 0.9}, 1), row("fedit", {0: 0.8}, 2)]
    assert "not measured" in ranking_note(one, "accuracy")


def test_runs_of_different_metrics_are_not_mixed_in_one_table(tmp_path):
    from fedlease.reporting.comparison import FinishedRun, write_comparison

    history = [{"clients": {"a": {"accuracy": 0.5, "rouge_l": 0.4, "trainable_params": 1}}}]
    runs = [FinishedRun("fedit", 0, {"a": "t"}, history, 1.0, "accuracy"),
            FinishedRun("local", 0, {"a": "t"}, history, 1.0, "rouge_l")]
    with pytest.raises(ConfigError, match=r"different metrics \['accuracy', 'rouge_l'\]"):
        write_comparison(runs, tmp_path)


def test_a_finished_run_of_another_configuration_is_not_reused(compared, monkeypatch):
    """rounds 2 -> 3: refused before anything runs, naming the pair and the field; with
    rerun_stale the stale pairs run again (replacing their folder), the others are reused."""
    config, out, _ = compared

    def must_not_run(*args, **kwargs):
        raise AssertionError("ran a pair")

    monkeypatch.setattr(compare, "run_simulation", must_not_run)
    config3 = load_config(overrides={section: dict(values) for section, values in
                                     config_to_dict(config).items()})
    config3.federation.rounds = 3
    with pytest.raises(ConfigError) as err:
        run_comparison(config3, ["fedit", "local"], [0], out, progress=False)
    message = str(err.value)
    assert f"{out / 'fedit' / 'seed-0'}: federation.rounds = 2 there, 3 now" in message
    assert f"{out / 'local' / 'seed-0'}: federation.rounds" in message
    assert "--rerun-stale" in message and "another --out" in message

    ran = []

    def recording(cfg, folder, progress, overwrite):
        ran.append((cfg.federation.algorithm, cfg.federation.rounds, overwrite))
        raise KeyboardInterrupt  # stop before anything is replaced

    monkeypatch.setattr(compare, "run_simulation", recording)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(config3, ["fedit"], [0], out, progress=False, rerun_stale=True)
    assert ran == [("fedit", 3, True)]


def test_a_saved_config_missing_newer_keys_is_read_with_their_defaults(compared, monkeypatch):
    """A config.toml written before a key existed equals a config holding that key's default."""
    config, out, _ = compared
    path = out / "fedit" / "seed-0" / "config.toml"
    original = path.read_text()
    assert "max_update_norm = 100.0\n" in original
    path.write_text(original.replace("max_update_norm = 100.0\n", ""))

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished pair of the same configuration was run again")

    monkeypatch.setattr(compare, "run_simulation", must_not_run)
    try:
        run_comparison(config, ["fedit"], [0], out, progress=False)
    finally:
        path.write_text(original)
