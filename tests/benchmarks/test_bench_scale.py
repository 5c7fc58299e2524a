"""The growth benchmark measures what it says on a tiny model: a sampled round with its output
folder, the last round over every client, the profile step and the allocation, the bytes a round
writes; and the allocation alone past the exact-clustering limit."""

from ..conftest import load_script


def test_one_point_and_its_report(tiny_model_dir, tmp_path):
    bench = load_script("bench_scale")
    args = bench.parse_args(["--clients", "8", "--per-round", "4", "--model",
                             str(tiny_model_dir), "--max-length", "8",
                             "--out-root", str(tmp_path)])
    args.point = 8
    point = bench.one_point(args)
    assert point["clients"] == 8 and point["trained"] >= 4
    assert point["download_bytes"] > 0 and point["upload_bytes"] > 0
    assert point["round_seconds"] >= point["round_train_seconds"] > 0
    assert point["profile_seconds"] > 0 and point["allocation_seconds"] > 0
    assert point["written_bytes_round"] > 0 and point["folder_bytes"] > 0
    assert list(tmp_path.iterdir()) == []  # the run's folder is removed once measured
    args.allocation_point, args.exact_allocation_clients = 40, 12
    allocation = bench.allocation_point(args)
    assert allocation["clients"] == 40 and allocation["clustered"] == 12
    assert allocation["ari"] == 1.0  # the planted directions are found
    text = bench.report([point, {**point, "clients": 16, "peak_rss_mib": 1.0 + point[
        "peak_rss_mib"]}], [allocation])
    assert "memory growth per added client" in text and "alloc s" in text
    assert "allocated" in text
