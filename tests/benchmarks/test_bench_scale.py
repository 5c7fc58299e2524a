"""The growth benchmark measures what it says on a tiny model: a sampled round, the last
round over every client, the clustering of all clients and the traffic of a round."""

from ..conftest import load_script


def test_one_point_and_its_report(tiny_model_dir):
    bench = load_script("bench_scale")
    args = bench.parse_args(["--clients", "8", "--per-round", "4", "--model",
                             str(tiny_model_dir), "--max-length", "8"])
    args.point = 8
    point = bench.one_point(args)
    assert point["clients"] == 8 and point["trained"] >= 4
    assert point["download_bytes"] > 0 and point["upload_bytes"] > 0
    assert point["clustering_seconds"] > 0 and point["state_bytes"] > 0
    text = bench.report([point, {**point, "clients": 16, "peak_rss_mib": 1.0 + point[
        "peak_rss_mib"]}])
    assert "memory growth per added client" in text and "clustering s" in text
