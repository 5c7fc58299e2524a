"""The memory estimate (``fedlease.model.memory``) against the measured peak of one training
step on CPU, per configuration: base weights, then adapters + optimizer + activations.

Each case runs in a fresh process. It loads the base model as a run does
(``tasks.loading.load_base_model``: quantized, checkpointing on, as configured), and its
resident memory after the load, less the one before, is the measured weights. Then the peak
counter is reset (Linux ``/proc/self/clear_refs``) and one AdamW step runs on a batch of the
longest sequences under the FedLEASE layout of ``max_experts = 4`` (4 experts, 7 router slots):
the peak resident memory above the level before the step is the measured training part. The
estimate is computed from the model's config alone, before anything loads.

    python benchmarks/bench_memory.py                        # SmolLM2-135M, the default cases
    python benchmarks/bench_memory.py --model PATH --json memory.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from fedlease.configure import load_config
from fedlease.model.adapted import ADAPTER_PREFIX
from fedlease.model.hub import resolve_model_path
from fedlease.model.lora import AdapterLayout
from fedlease.model.memory import GiB, estimate_memory, read_model_shape, run_settings
from fedlease.tasks import task_of
from fedlease.tasks.loading import base_model_path, load_base_model

EXPERTS = 4


class Case(NamedTuple):
    batch: int
    prompt: int  # model.max_length
    answer: int = 16  # model.max_new_tokens
    checkpointing: bool = False
    quantization: str = "none"

    @property
    def name(self) -> str:
        extras = [x for x, on in (("checkpointing", self.checkpointing),
                                  (self.quantization, self.quantization != "none")) if on]
        return f"batch {self.batch} x {self.prompt + self.answer} tokens" + "".join(
            f", {x}" for x in extras)


CASES = [Case(8, 128), Case(8, 128, checkpointing=True), Case(4, 496),
         Case(4, 496, checkpointing=True), Case(8, 128, quantization="8bit"),
         Case(8, 128, quantization="4bit")]
# glibc keeps freed memory of up to 32 MiB a chunk for reuse (its mmap threshold grows as
# blocks are freed), so the resident peak exceeds what the tensors alive at once take; with a
# fixed threshold, freed blocks go back to the system at once
ALLOCATORS = {"glibc default": {}, "returned at once": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def status(field: str) -> int:
    """``VmRSS``/``VmHWM`` of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def case_config(case: Case, model: str):
    return load_config(overrides={
        "model": {"task": "generation", "path": model, "max_length": case.prompt,
                  "max_new_tokens": case.answer, "quantization": case.quantization},
        "train": {"batch_size": case.batch, "gradient_checkpointing": case.checkpointing},
        "federation": {"max_experts": EXPERTS}})


def mixture_state(model, rank: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, (d_in, d_out) in model.adapter_shapes().items():
        for part, shape in (("lora_A", (EXPERTS, rank, d_in)), ("lora_B", (EXPERTS, d_out, rank)),
                            ("router", (2 * EXPERTS - 1, d_in))):
            state[f"{ADAPTER_PREFIX}{name}.{part}"] = torch.randn(shape, generator=gen) * 0.02
    return state


def run_case(case: Case, model_path: str) -> dict:
    """Estimate and measure one case in this process (call it in a fresh one)."""
    config = case_config(case, model_path)
    folder = resolve_model_path(base_model_path(config))
    shape = read_model_shape(folder, task_of(config).auto_class, config.model.target_modules)
    sequence = case.prompt + case.answer
    estimate = estimate_memory(shape, run_settings(config, shape, sequence))
    gc.collect()
    before = status("VmRSS")
    model, _ = load_base_model(config)
    with torch.no_grad():  # weights read lazily from the file are resident once used
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.float().sum()
    gc.collect()
    loaded = status("VmRSS")
    load_peak = status("VmHWM")
    model.load_state(mixture_state(model, config.lora.rank), AdapterLayout.fedlease(EXPERTS, 0))
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    ids = torch.randint(10, shape.vocab, (case.batch, sequence),
                        generator=torch.Generator().manual_seed(0))
    gc.collect()
    reset_peak()
    start_level = status("VmRSS")
    start = time.perf_counter()
    logits = model.answer_logits(ids, torch.ones_like(ids), case.answer)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                             ids[:, -case.answer:].flatten())
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = status("VmHWM")
    return {"case": case.name, **case._asdict(), "step_seconds": seconds,
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", ""),
            "estimated_weights": estimate.weights,
            "estimated_training": estimate.adapters + estimate.activations,
            "measured_weights": loaded - before, "measured_training": peak - start_level,
            "measured_load_peak": load_peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="model.path (default: SmolLM2-135M)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(Case(**json.loads(args.case)), args.model)))
        return
    rows = []
    for case in CASES:
        row = {}
        for allocator, env in ALLOCATORS.items():
            done = subprocess.run([sys.executable, __file__, "--model", args.model, "--threads",
                                   str(args.threads), "--case", json.dumps(case._asdict())],
                                  capture_output=True, text=True, check=False,
                                  env={**os.environ, **env})
            if done.returncode != 0:
                print(f"{case.name}, {allocator}: failed\n{done.stderr[-2000:]}",
                      file=sys.stderr)
                break
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            row = {**measured, **row,
                   f"measured_weights ({allocator})": measured["measured_weights"],
                   f"measured_training ({allocator})": measured["measured_training"]}
        else:
            rows.append(row)
            print_row(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def print_row(row: dict) -> None:
    """| case | weights: estimated, measured (glibc default, returned at once) | training:
    the same | total: the same | step seconds |"""
    weights = [row[f"measured_weights ({a})"] for a in ALLOCATORS]
    training = [row[f"measured_training ({a})"] for a in ALLOCATORS]
    cells = [row["estimated_weights"], *weights, row["estimated_training"], *training,
             row["estimated_weights"] + row["estimated_training"],
             *(w + t for w, t in zip(weights, training, strict=True))]
    print(f"| {row['case']} | " + " | ".join(f"{c / GiB:.2f}" for c in cells)
          + f" | {row['step_seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
