"""The memory benchmark estimates and measures a case end to end (tiny model, in process)."""

from pathlib import Path

import pytest

from ..conftest import load_script


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                    reason="peak memory is read from Linux /proc")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_case_is_estimated_and_measured(tiny_llama_dir, checkpointing):
    bench = load_script("bench_memory")
    case = bench.Case(batch=4, prompt=40, answer=4, checkpointing=checkpointing)
    row = bench.run_case(case, str(tiny_llama_dir))
    assert row["case"].startswith("batch 4 x 44 tokens")
    assert ("checkpointing" in row["case"]) == checkpointing
    assert row["estimated_weights"] > 0 and row["estimated_training"] > 0
    assert row["measured_training"] >= 0 and row["step_seconds"] > 0
