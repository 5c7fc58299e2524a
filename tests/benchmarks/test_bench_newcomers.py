"""The newcomer benchmark's data folders and table (the runs themselves: docs/results.md)."""

from fedlease.data.client_data import ClientData, Example
from fedlease.data.sources import load_jsonl_folder

from ..conftest import load_script


def test_clients_written_as_a_jsonl_folder_load_back_with_their_labels(tmp_path):
    bench = load_script("bench_newcomers")
    client = ClientData("news-0", "news", ["sport", "tech"],
                        [Example("a goal", 0), Example("a chip", 1, "pair")],
                        [Example(f"t{i}", i % 2) for i in range(5)])
    (back,) = load_jsonl_folder(bench.write_clients(tmp_path / "fed", [client], test=3))
    assert back.labels == ["sport", "tech"] and back.task == "news"
    assert back.train == client.train and back.test == client.test[:3]


def test_the_table_averages_each_algorithm_over_the_seeds_that_have_it():
    bench = load_script("bench_newcomers")
    by_seed = {0: {"local": {"0": {"a": 0.5, "b": 0.7}, "9": {"a": 1.0, "b": 1.0}},
                   "fedit": {"0": {"a": 0.9, "b": 0.9}}},
               1: {"local": {"0": {"a": 0.8, "b": 0.8}}}}
    lines = bench.table(by_seed, (0, 9)).splitlines()
    assert lines[2] == "| local | 2 | 70.0 ± 14.1 | 100.0 ± 0.0 |"
    assert lines[3] == "| fedit | 1 | 90.0 ± 0.0 | – |"  # a budget not run
