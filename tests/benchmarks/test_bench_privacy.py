"""The DP benchmark times what a run trains: both layouts, with and without DP-SGD."""

from fedlease.configure import with_overrides

from ..conftest import load_script


def test_both_layouts_are_timed_with_and_without_dp(tiny_config):
    bench = load_script("bench_privacy")
    config = with_overrides(tiny_config, {"privacy": {"epsilon": 8.0, "seeded_noise": True}})
    figures = bench.measure(config, repeats=1)
    assert set(figures) == set(bench.LAYOUTS)
    for row in figures.values():
        assert row["dp_s_per_step"] > 0 and row["plain_s_per_step"] > 0
        assert row["ratio"] == row["dp_s_per_step"] / row["plain_s_per_step"]
