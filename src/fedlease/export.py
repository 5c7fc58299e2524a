"""``fedlease export``: a trained model into the Hugging Face ecosystem, or a self-describing
fedlease folder.

* ``peft``: ``adapter_config.json`` + ``adapter_model.safetensors``, loaded with
  ``PeftModel.from_pretrained(base, DIR)``. Any model whose experts are summed (one LoRA; FedDPA's
  global + personal LoRA, written as one LoRA of rank ``2r`` with ``lora_alpha = 2 alpha``, the
  same ``alpha / r`` scaling) or whose router always picks the same expert.
* ``merged``: the LoRA folded into the base weights (``W + alpha/r B A``), ``save_pretrained``
  with the tokenizer; loads with transformers alone. Same models as ``peft``.
* ``fedlease``: ``fedlease_model.json`` + ``model.safetensors`` for every model, router-mixed
  FedLEASE ones included; ``fedlease.load_client_model(DIR)`` rebuilds it without the run folder.

A classifier's head reads the mean of the encoder's last hidden states, which no transformers
``*ForSequenceClassification`` class does (BERT-like ones read the pooled first token), so in the
``peft`` and ``merged`` formats it is written beside the model: ``classifier.safetensors``
(``weight [labels, hidden]``, ``bias [labels]``) and ``classifier.json`` (label names, pooling).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save as save_tensors

from fedlease.errors import ModelFileError
from fedlease.model.adapted import ADAPTER_PREFIX, HEAD_PREFIX, load_pretrained
from fedlease.model.lora import AdapterLayout
from fedlease.reporting.files import atomic_write, atomic_write_bytes
from fedlease.saved_models import MODEL_FILE, MODEL_WEIGHTS, SavedModel, describe_model
from fedlease.tasks import task_of

FORMATS = ("peft", "merged", "fedlease")
CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_CONFIG = "classifier.json"


def summed_experts(layout: AdapterLayout) -> list[int] | None:
    """The experts a layer adds up with weight 1 whatever the input, or None when a router
    weighs them per token (then no single LoRA can stand for them)."""
    if layout.router_slots is None:
        return list(range(layout.num_experts))
    if len(set(layout.router_slots)) == 1:  # the kept slots' weights add up to 1
        return [layout.router_slots[0]]
    return None


def single_lora(model: SavedModel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per adapted module: ``(A [E*r, d_in], B [d_out, E*r])`` with ``B A`` the sum of the
    experts in use; an error naming the ``fedlease`` format for router-mixed models."""
    experts = summed_experts(model.layout)
    if experts is None:
        raise ModelFileError(
            f"{model.name}: a {model.algorithm} model mixes {model.layout.num_experts} LoRA "
            "experts with a router per token; one LoRA cannot hold it: export it with "
            "--format fedlease (or one server expert with --expert K --format peft)")
    index = torch.tensor(experts)
    out = {}
    for key, A in model.state.items():
        if key.startswith(ADAPTER_PREFIX) and key.endswith(".lora_A"):
            module = key[len(ADAPTER_PREFIX) : -len(".lora_A")]
            B = model.state[f"{ADAPTER_PREFIX}{module}.lora_B"]
            out[module] = (A[index].flatten(0, 1).contiguous(),
                           B[index].permute(1, 0, 2).flatten(1).contiguous())
    return out


def export_model(model: SavedModel, fmt: str, out_dir: str | Path) -> Path:
    """Write ``model`` to the new (or empty) folder ``out_dir`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ModelFileError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelFileError(f"--out {out}: exists and is not an empty folder; choose a new one")
    writer = {"peft": write_peft, "merged": write_merged, "fedlease": write_fedlease}[fmt]
    loras = single_lora(model) if fmt != "fedlease" else None  # refused before any file
    if (fmt == "fedlease" and task_of(model.config).has_head
            and HEAD_PREFIX + "weight" not in model.state):
        raise ModelFileError(f"{model.name}: a server expert has no client head to classify "
                             "with; export it with --format peft or merged")
    out.mkdir(parents=True, exist_ok=True)
    writer(model, out, loras)
    return out


def write_peft(model: SavedModel, out: Path, loras) -> None:
    rank = next(iter(loras.values()))[0].shape[0]
    scaling = model.config.lora.alpha / model.config.lora.rank
    config = {
        "peft_type": "LORA",
        "task_type": task_of(model.config).peft_task_type,
        "base_model_name_or_path": model.config.model.path,
        "r": rank,
        "lora_alpha": scaling * rank,  # peft scales by lora_alpha / r
        "lora_dropout": model.config.lora.dropout,
        "target_modules": sorted(loras),  # exact module names: exactly the adapted layers
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    tensors = {}
    for module, (A, B) in loras.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = A
        tensors[f"base_model.model.{module}.lora_B.weight"] = B
    atomic_write(out / "adapter_config.json", json.dumps(config, indent=1))
    atomic_write_bytes(out / "adapter_model.safetensors",
                       save_tensors(tensors, metadata={"format": "pt"}))
    write_classifier(model, out)


@torch.no_grad()
def write_merged(model: SavedModel, out: Path, loras) -> None:
    base, tokenizer = load_pretrained(model.config.model.path, task_of(model.config).auto_class,
                                      revision=model.config.model.revision)
    scaling = model.config.lora.alpha / model.config.lora.rank
    for module, (A, B) in loras.items():
        weight = base.get_submodule(module).weight
        weight += (scaling * (B.double() @ A.double())).to(weight.dtype)
    base.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_classifier(model, out)


def write_classifier(model: SavedModel, out: Path) -> None:
    """The head beside a peft or merged classifier (nothing for generation or an expert)."""
    if HEAD_PREFIX + "weight" not in model.state:
        return
    head = {name: model.state[HEAD_PREFIX + name].contiguous() for name in ("weight", "bias")}
    atomic_write_bytes(out / CLASSIFIER_WEIGHTS, save_tensors(head))
    atomic_write(out / CLASSIFIER_CONFIG, json.dumps({
        "labels": model.labels, "task": model.task, "client": model.name,
        "pooling": "mean of last_hidden_state over attention_mask",
        "logits": "pooled @ weight.T + bias", "max_length": model.config.model.max_length,
    }, indent=1))


def write_fedlease(model: SavedModel, out: Path, _loras) -> None:
    state = {key: value.contiguous() for key, value in model.state.items()}
    atomic_write_bytes(out / MODEL_WEIGHTS, save_tensors(
        state, metadata={"layout": json.dumps(model.layout.to_config())}))
    atomic_write(out / MODEL_FILE, json.dumps(describe_model(model), indent=1))
