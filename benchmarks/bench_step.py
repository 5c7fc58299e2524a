"""One local training step: FedLEASE's mixture of LoRA experts against a plain peft LoRA.

Every variant runs the same step as ``ClassificationTrainer.train`` (``fedlease.tasks``: mean-pooled
encoder, linear head, cross-entropy, AdamW) on the same model shape, batch and device:

* ``frozen_forward``  the frozen encoder's forward alone, no gradients (the floor);
* ``peft_lora``       peft LoRA on the target modules (the yardstick every ratio divides by);
* ``fedlease_own``    our ``MixtureLoRALinear``, FedLEASE layout: K experts, 2K-1 router slots,
                      top K, only the client's own expert and its router trainable;
* ``fedlease_all``    the same layer with all K experts trainable;
* ``reference_slots`` the same function computed as the authors' reference layer does it: every
                      kept router slot recomputes every expert, writes masked by the slot's choice
                      (K^2 expert products), FedLEASE layout.

Timings are interleaved (one step of each variant per repetition, in rotating order) so that a
shared or throttled machine slows every variant alike; the table reports medians. Peak memory is
measured one variant per fresh subprocess (CPU: the process's peak RSS; CUDA: the allocator's
peak), after warm-up steps so the optimizer state exists.

    python benchmarks/bench_step.py                      # CPU, default model, batch 16 x 64
    python benchmarks/bench_step.py --device cuda        # RoBERTa-large shape, batch 128 x 128
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

from fedlease.config import PRECISIONS
from fedlease.model.classifier import FederatedClassifier, default_model_path
from fedlease.model.lora import AdapterLayout, MixtureLoRALinear, init_lora, init_router
from fedlease.model.precision import autocast_dtype

VARIANTS = ("frozen_forward", "peft_lora", "fedlease_own", "fedlease_all", "reference_slots")
BASELINE = "peft_lora"
NUM_LABELS = 2


# -- models ---------------------------------------------------------------------------------

def roberta_large_shaped() -> nn.Module:
    """RoBERTa-large's architecture with random weights: no download, same cost per step."""
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                           num_attention_heads=16, intermediate_size=4096,
                           max_position_embeddings=514, type_vocab_size=1)
    return RobertaModel(config, add_pooling_layer=False)


def load_backbone(model: str) -> nn.Module:
    from transformers import AutoModel

    if model == "roberta-large-shape":
        backbone = roberta_large_shaped()
    else:
        path = default_model_path() if model == "default" else model
        backbone = AutoModel.from_pretrained(path, local_files_only=True)
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


class PooledHead(nn.Module):
    """The pooling and head of ``FederatedClassifier`` around any encoder (here: peft's)."""

    def __init__(self, encoder: nn.Module, hidden_size: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden_size, NUM_LABELS)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled.to(self.head.weight.dtype))


class PerSlotMixtureLoRALinear(MixtureLoRALinear):
    """The reference computation: for each of the top-k slots, every expert on every token,
    kept where the slot chose it. Same function as ``MixtureLoRALinear``, K^2 expert products."""

    def forward(self, x):
        y = self.base(x)
        A, B = self.experts()
        xf = self.dropout(x).to(A.dtype)
        probs = torch.softmax(x.to(A.dtype) @ self.router.t(), dim=-1)
        top_p, top_slot = probs.topk(self.layout.top_k, dim=-1)
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        chosen = self.slot_expert[top_slot]  # [..., k] expert of each kept slot
        delta = torch.zeros_like(y, dtype=A.dtype)
        for j in range(self.layout.top_k):
            for e in range(self.layout.num_experts):
                out = (xf @ A[e].t()) @ B[e].t()
                mask = (chosen[..., j] == e).unsqueeze(-1)
                delta = torch.where(mask, delta + top_p[..., j : j + 1] * out, delta)
        return y + (self.scaling * delta).to(y.dtype)


def fedlease_state(model: FederatedClassifier, num_experts: int, seed: int) -> dict:
    """K experts with non-zero B (as after warm-up) and one router per adapted layer."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (d_in, d_out) in model.adapter_shapes().items():
        A = torch.cat([init_lora(d_in, d_out, model.rank, gen)[0] for _ in range(num_experts)])
        B = torch.randn(num_experts, d_out, model.rank, generator=gen) * 0.01
        state[f"adapter.{name}.lora_A"], state[f"adapter.{name}.lora_B"] = A, B
        state[f"adapter.{name}.router"] = init_router(d_in, 2 * num_experts - 1, gen)
    state.update(model.new_head(NUM_LABELS, gen))
    return state


def build_variant(name: str, backbone: nn.Module, args, device) -> nn.Module:
    """A fresh copy of the frozen encoder, adapted as ``name`` says."""
    encoder = copy.deepcopy(backbone)
    targets, K = args.targets, args.experts
    if name == "frozen_forward":
        return PooledHead(encoder, encoder.config.hidden_size).to(device).eval()
    if name == "peft_lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                          target_modules=targets)
        return PooledHead(get_peft_model(encoder, lora), encoder.config.hidden_size).to(device)
    model = FederatedClassifier(encoder, targets, args.rank, args.alpha, args.dropout)
    if name == "reference_slots":
        for layer in model.adapters.values():
            layer.__class__ = PerSlotMixtureLoRALinear
    own = AdapterLayout.fedlease(K, own_expert=0)
    layout = own if name != "fedlease_all" else AdapterLayout(
        K, tuple(range(K)), True, own.router_slots, own.top_k)
    model.to(device)
    model.load_state(fedlease_state(model, K, seed=0), layout)
    return model


# -- one step -------------------------------------------------------------------------------

class Runner:
    """One variant's model, optimizer and step, exactly as ``LocalTrainer.train`` steps
    (classification)."""

    def __init__(self, name, model, device, dtype):
        self.name, self.model, self.device, self.dtype = name, model, device, dtype
        self.trains = name != "frozen_forward"
        if self.trains:
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            self.num_trainable = sum(p.numel() for p in params)
            self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
            self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        else:
            self.num_trainable = 0

    def logits(self, batch):
        if self.dtype is None:
            return self.model(**batch)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self.model(**batch).float()

    def step(self, batch, labels) -> float:
        if not self.trains:
            with torch.no_grad():
                return float(F.cross_entropy(self.logits(batch), labels))
        loss = F.cross_entropy(self.logits(batch), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.item()


def make_batch(args, vocab_size: int, device):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab_size, (args.batch_size, args.seq_len), generator=gen)
    batch = {"input_ids": ids.to(device),
             "attention_mask": torch.ones_like(ids).to(device)}
    labels = torch.randint(0, NUM_LABELS, (args.batch_size,), generator=gen).to(device)
    return batch, labels


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(args, device, dtype) -> dict[str, dict]:
    """Median step time per variant, the variants interleaved within each repetition."""
    backbone = load_backbone(args.model)
    batch, labels = make_batch(args, backbone.config.vocab_size, device)
    runners = [Runner(n, build_variant(n, backbone, args, device), device, dtype)
               for n in args.variants]
    del backbone
    for _ in range(args.warmup):
        for r in runners:
            r.step(batch, labels)
    times = {r.name: [] for r in runners}
    for rep in range(args.repeats):
        shift = rep % len(runners)
        for r in runners[shift:] + runners[:shift]:
            sync(device)
            start = time.perf_counter()
            r.step(batch, labels)
            sync(device)
            times[r.name].append(time.perf_counter() - start)
    return {r.name: {"ms": 1000 * statistics.median(times[r.name]),
                     "trainable": r.num_trainable} for r in runners}


# -- peak memory, one variant per process ------------------------------------------------------

def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_memory(args, device, dtype) -> dict:
    """Peak memory over a few steps of one variant: in total, and above what the built model
    holds at rest (CPU: RSS; glibc keeps freed memory, so the peak is set by the first steps)."""
    (name,) = args.variants
    backbone = load_backbone(args.model)
    batch, labels = make_batch(args, backbone.config.vocab_size, device)
    runner = Runner(name, build_variant(name, backbone, args, device), device, dtype)
    del backbone
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        rest = torch.cuda.memory_allocated(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        rest = rss_kib("VmRSS") * 1024
    for _ in range(args.warmup + 2):  # the first step also allocates the optimizer state
        runner.step(batch, labels)
    sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = rss_kib("VmHWM") * 1024
    return {"peak_mib": peak / 2**20, "step_mib": (peak - rest) / 2**20}


def memory_in_subprocesses(args) -> dict[str, dict]:
    out = {}
    for name in args.variants:
        cmd = [sys.executable, __file__, "--memory-of", name, *args.passthrough]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory run of {name} failed:\n{proc.stderr}")
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# -- report ---------------------------------------------------------------------------------

def table(args, timing: dict, memory: dict | None, device, dtype) -> str:
    tokens = args.batch_size * args.seq_len
    base_ms = timing[BASELINE]["ms"] if BASELINE in timing else None
    lines = [
        f"device {device.type} ({device_name(device)}), model {args.model}, batch "
        f"{args.batch_size} x {args.seq_len} tokens, autocast {dtype or 'off (fp32)'}, "
        f"r={args.rank}, K={args.experts}, targets {args.targets}, "
        f"median of {args.repeats} interleaved steps",
        "",
        f"{'variant':<17}{'ms/step':>9}{'x peft':>8}{'tokens/s':>10}{'trainable':>11}"
        + (f"{'peak MiB':>10}{'x peft':>8}{'step MiB':>10}{'x peft':>8}" if memory else ""),
    ]
    for name in args.variants:
        t = timing[name]
        row = (f"{name:<17}{t['ms']:>9.1f}{ratio(t['ms'], base_ms):>8}"
               f"{tokens / t['ms'] * 1000:>10.0f}{t['trainable']:>11,}")
        if memory:
            m, b = memory[name], memory.get(BASELINE)
            row += (f"{m['peak_mib']:>10.0f}{ratio(m['peak_mib'], b and b['peak_mib']):>8}"
                    f"{m['step_mib']:>10.0f}{ratio(m['step_mib'], b and b['step_mib']):>8}")
        lines.append(row)
    return "\n".join(lines)


def ratio(value: float, base: float | None) -> str:
    return "-" if not base else f"{value / base:.2f}"


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{torch.get_num_threads()} threads"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", default=None,
                        help="default (all-MiniLM-L6-v2), roberta-large-shape (random weights), "
                             "or a local model folder; default: default on CPU, "
                             "roberta-large-shape on CUDA")
    parser.add_argument("--batch-size", type=int, default=None, help="CPU 16, CUDA 128")
    parser.add_argument("--seq-len", type=int, default=None, help="CPU 64, CUDA 128")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--targets", nargs="+", default=["query", "value"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.model = args.model or ("roberta-large-shape" if cuda else "default")
    args.batch_size = args.batch_size or (128 if cuda else 16)
    args.seq_len = args.seq_len or (128 if cuda else 64)
    # what a memory subprocess needs to build the same setup
    args.passthrough = [
        "--device", args.device, "--model", args.model, "--batch-size", str(args.batch_size),
        "--seq-len", str(args.seq_len), "--precision", args.precision, "--rank", str(args.rank),
        "--alpha", str(args.alpha), "--dropout", str(args.dropout),
        "--experts", str(args.experts), "--warmup", str(args.warmup),
        "--threads", str(args.threads), "--targets", *args.targets,
    ]
    if args.memory_of:
        args.variants = [args.memory_of]
    elif BASELINE not in args.variants:
        parser.error(f"--variants must include {BASELINE}: every ratio divides by it")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = autocast_dtype(args.device, args.precision)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(measure_memory(args, device, dtype)))
        return {}
    timing = time_variants(args, device, dtype)
    memory = None if args.no_memory else memory_in_subprocesses(args)
    print(table(args, timing, memory, device, dtype))
    figures = {"device": args.device, "device_name": device_name(device), "model": args.model,
               "batch_size": args.batch_size, "seq_len": args.seq_len,
               "autocast": str(dtype), "timing": timing, "memory": memory}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
