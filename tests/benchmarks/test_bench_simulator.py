"""The simulator benchmark's report with the smallest setting the README smoke uses (one
client count for the memory runs) must print, not divide by zero."""

from ..conftest import load_script


def load_bench():
    return load_script("bench_simulator")


def test_memory_report_with_one_client_count_has_no_growth_line():
    bench = load_bench()
    args = bench.parse_args(["--memory-clients", "4"])
    one = {"clients": 4, "peak_rss_mib": 700.0, "num_experts": 2, "wall": 3.0}
    text = bench.report(args, None, [one])
    assert "      4           700   2      3.0" in text
    assert "growth per added client" not in text
