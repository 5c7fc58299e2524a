"""Shared fixtures: a tiny random-init BERT saved as a local model folder, and small
synthetic per-client JSONL federations with planted tasks."""

from __future__ import annotations

import json
import os
import random

import pytest

# Hugging Face datasets (data.source = "datasets") reads local files only; never the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Two planted tasks: each decides its label by which of its two cue words a sentence holds.
TASK_WORDS = {
    "colors": ("red", "blue"),
    "animals": ("cat", "dog"),
}
FILLER = "the a of and to in is it that for on with as was at by an be this".split()


def make_tiny_model_dir(path, vocab_extra=()):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + FILLER + list(vocab_extra)
    for cues in TASK_WORDS.values():
        words += list(cues)
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(words)) + "\n")
    # the vocabulary file positionally: transformers 5 ignores a vocab_file keyword and builds
    # a 5-token vocabulary, every word [UNK]
    BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(vocab_size=len(set(words)) + 5, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"))


def classification_row(task: str, text: str, cue: str) -> dict:
    return {"text": text, "label": cue}


def write_clients(folder, cues_by_task, clients_per_task, train, test, sentence,
                  make_row=classification_row):
    """``<task>-<i>.jsonl`` per client, lines with a split field; the task named in a manifest.
    Example ``j`` of a split has cue ``cues[j % 2]`` (its label); ``sentence(task, cue)``: its
    words; ``make_row(task, text, cue)``: the fields of a line (default: text and label)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for task, cues in cues_by_task.items():
        for i in range(clients_per_task):
            name = f"{task}-{i}"
            manifest[name] = task
            lines = []
            for split, n in (("train", train), ("test", test)):
                for j in range(n):
                    cue = cues[j % 2]
                    text = " ".join(sentence(task, cue))
                    lines.append({**make_row(task, text, cue), "split": split})
            (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (folder / "manifest.json").write_text(json.dumps({"clients": manifest}))
    return folder


def write_federation(folder, clients_per_task=2, train=24, test=8, seed=0,
                     make_row=classification_row):
    """The two planted tasks: six random filler words and the cue, shuffled."""
    rng = random.Random(seed)

    def sentence(task, cue):
        words = rng.choices(FILLER, k=6) + [cue]
        rng.shuffle(words)
        return words

    return write_clients(folder, TASK_WORDS, clients_per_task, train, test, sentence, make_row)


@pytest.fixture
def tiny_federation(tmp_path):
    return write_federation(tmp_path / "fed")


@pytest.fixture(scope="module")
def module_tiny_federation(tmp_path_factory):
    """The same federation, shared by the tests of one module (for expensive fixtures)."""
    return write_federation(tmp_path_factory.mktemp("fed"))


@pytest.fixture
def tiny_config(tiny_model_dir, tiny_federation, tmp_path):
    """A small, fast FedLEASE config on the tiny model and the synthetic federation."""
    from fedlease.configure import load_config

    return load_config(overrides={
        "model": {"path": str(tiny_model_dir), "max_length": 16},
        "data": {"source": "jsonl", "path": str(tiny_federation)},
        "train": {"batch_size": 8, "lr": 1e-2},
        "federation": {"rounds": 3, "warmup_rounds": 1, "max_experts": 3, "seed": 0},
        "output": {"dir": str(tmp_path / "out")},
    })


# -- generation: a tiny random-init LLaMA with a word-level tokenizer, and an instruction
# federation whose answer is the cue word of the input ---------------------------------------

INSTRUCTIONS = {"colors": "which color is named ?", "animals": "which animal is named ?"}
PROMPT_WORDS = ("### Instruction Input Response : ? which color animal is named "
                "user assistant").split()


def make_tiny_causal_lm_dir(path, arch: str = "llama", chat_template: str | None = None,
                            vocab_extra=()):
    """A random-init causal LM (``llama``: rotary positions; ``opt``: learned absolute
    positions) with a word-level tokenizer, saved as a local model folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        PreTrainedTokenizerFast,
    )

    path.mkdir(parents=True, exist_ok=True)
    words = ["<pad>", "<unk>", "<s>", "</s>"] + PROMPT_WORDS + FILLER + list(vocab_extra)
    for cues in TASK_WORDS.values():
        words += list(cues)
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                        unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    ids = {"vocab_size": len(vocab), "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, **ids))
    else:
        model = OPTForCausalLM(OPTConfig(
            hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            word_embed_proj_dim=32, max_position_embeddings=128, **ids))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return make_tiny_causal_lm_dir(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory):
    return make_tiny_causal_lm_dir(tmp_path_factory.mktemp("tiny_opt"), "opt")


def instruction_row(task: str, text: str, cue: str) -> dict:
    """An instruction whose answer is the input's cue word."""
    return {"instruction": INSTRUCTIONS[task], "input": text, "output": cue}


@pytest.fixture
def tiny_generation_config(tiny_llama_dir, tmp_path):
    """A small, fast FedLEASE generation config on the tiny LLaMA."""
    from fedlease.configure import load_config

    fed = write_federation(tmp_path / "instructions", train=8, test=4,
                           make_row=instruction_row)
    return load_config(overrides={
        "model": {"task": "generation", "path": str(tiny_llama_dir), "max_length": 32,
                  "max_new_tokens": 3},
        "data": {"source": "jsonl", "path": str(fed)},
        "train": {"batch_size": 8, "lr": 1e-2},
        "federation": {"rounds": 3, "warmup_rounds": 1, "max_experts": 3, "seed": 0},
        "output": {"dir": str(tmp_path / "out")},
    })


# -- a federation the tiny model learns in seconds: planted tasks, each with its own cue words
# (the label) and its own filler words; optionally a cue word of another task as a distractor

PLANTED_CUES = {"colors": ("red", "blue"), "animals": ("cat", "dog")}
PLANTED_FILLERS = {"colors": "the a of and to in is it".split(),
                   "animals": "that for on with as was at by".split()}


def write_planted_federation(folder, clients_per_task=4, train=8, test=16, seed=0,
                             fillers_per_example=2, distractor=False):
    """Short sentences of the task's own fillers and one of its two cue words, which is the
    label; with ``distractor``, also a random cue word of the other task (a word that decides
    the label there and is noise here)."""
    rng = random.Random(seed)

    def sentence(task, cue):
        others = [w for t, ws in PLANTED_CUES.items() if t != task for w in ws]
        words = rng.choices(PLANTED_FILLERS[task], k=fillers_per_example) + [cue]
        if distractor:
            words.append(rng.choice(others))
        rng.shuffle(words)
        return words

    return write_clients(folder, PLANTED_CUES, clients_per_task, train, test, sentence)


@pytest.fixture(scope="session")
def planted_model_dir(tmp_path_factory):
    """The tiny BERT with every word of the planted federations in its vocabulary."""
    extra = [w for words in PLANTED_FILLERS.values() for w in words]
    return make_tiny_model_dir(tmp_path_factory.mktemp("planted_bert"), vocab_extra=extra)


def planted_config(model_dir, federation, out_dir, algorithm="fedlease", rounds=3,
                   warmup_rounds=1, seed=0):
    """Settings under which the tiny model learns the planted tasks in a few rounds: full
    batches, 4 local epochs, no dropout and no weight decay."""
    from fedlease.configure import load_config

    return load_config(overrides={
        "model": {"path": str(model_dir), "max_length": 16},
        "data": {"source": "jsonl", "path": str(federation)},
        "lora": {"dropout": 0.0},
        "train": {"batch_size": 8, "lr": 3e-2, "weight_decay": 0.0, "local_epochs": 4},
        "federation": {"algorithm": algorithm, "rounds": rounds, "warmup_rounds": warmup_rounds,
                       "max_experts": 3, "seed": seed},
        "output": {"dir": str(out_dir)},
    })


# -- finished runs, for the tests that read a run folder back (predict, export) ---------------

@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_model_dir, tiny_llama_dir):
    """``finished_run(algorithm, task="classification")``: the folder of a finished 3-round run
    on the tiny models (made once per session per algorithm and task)."""
    from fedlease.configure import load_config
    from fedlease.transports.simulator import run_simulation

    made = {}

    def make(algorithm: str, task: str = "classification"):
        if (algorithm, task) not in made:
            root = tmp_path_factory.mktemp(f"run-{algorithm}-{task}")
            generation = task == "generation"
            fed = write_federation(root / "data", train=8 if generation else 24,
                                   test=4 if generation else 8,
                                   make_row=instruction_row if generation else classification_row)
            model = ({"task": "generation", "path": str(tiny_llama_dir), "max_length": 32,
                      "max_new_tokens": 3} if generation
                     else {"path": str(tiny_model_dir), "max_length": 16})
            config = load_config(overrides={
                "model": model, "data": {"source": "jsonl", "path": str(fed)},
                "train": {"batch_size": 8, "lr": 2e-2},
                "federation": {"algorithm": algorithm, "rounds": 3, "warmup_rounds": 1,
                               "max_experts": 3, "seed": 0},
                "output": {"dir": str(root / "out")},
            })
            run_simulation(config, config.output.dir, progress=False)
            made[algorithm, task] = root / "out"
        return made[algorithm, task]

    return make


# -- a run stopped between two rounds, then resumed -------------------------------------------

@pytest.fixture
def interrupted_then_resumed():
    """``interrupted_then_resumed(config, out, stop_round)``: the run of ``config`` into ``out``
    stopped (``KeyboardInterrupt``) as round ``stop_round`` begins, after the checkpoint of the
    round before, then resumed from it; the resumed run's ``RunResult``."""
    from fedlease.algorithms import ALGORITHMS
    from fedlease.transports.simulator import run_simulation

    def run(config, out, stop_round: int):
        algorithm_cls = ALGORITHMS[config.federation.algorithm]
        original = algorithm_cls.configure_fit

        def interrupted(self, rnd, first_time=(), clients=None):
            if rnd == stop_round:
                raise KeyboardInterrupt
            return original(self, rnd, first_time, clients)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(algorithm_cls, "configure_fit", interrupted)
            with pytest.raises(KeyboardInterrupt):
                run_simulation(config, out, progress=False)
        return run_simulation(config, out, progress=False, resume=True)

    return run


# -- one labelled table (data.source = "datasets"): the colors task, with a domain column ----

def planted_table(rows: int = 240, labels=("red", "blue"), domains=("web", "mail", "chat"),
                  seed: int = 0) -> dict[str, list]:
    """Columns ``text`` (filler words and the row's label word), ``label``, ``domain``; labels
    and domains cycle, so every label and domain has the same number of rows (give
    ``labels`` words of the tiny models' vocabulary to train on it)."""
    rng = random.Random(seed)
    columns = {"text": [], "label": [], "domain": []}
    for row in range(rows):
        label = labels[row % len(labels)]
        words = rng.choices(FILLER, k=6) + [label]
        rng.shuffle(words)
        columns["text"].append(f"{' '.join(words)} row{row}")
        columns["label"].append(label)
        columns["domain"].append(domains[row % len(domains)])
    return columns


def write_csv(path, columns: dict[str, list], delimiter: str = ",") -> str:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))
    return str(path)


@pytest.fixture
def colors_csv(tmp_path) -> str:
    """A CSV of 160 rows of ``planted_table`` (labels red / blue)."""
    return write_csv(tmp_path / "colors.csv", planted_table(160))


def load_script(name: str, folder: str = "benchmarks"):
    """``<folder>/<name>.py`` (a script, not a package module) imported as a module."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
