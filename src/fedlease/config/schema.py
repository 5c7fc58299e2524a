"""The run configuration's typed sections: what a TOML config file holds, and its defaults.

A leaf module, so every part of the package can name these types; reading, checking and writing
a config file is ``fedlease.config.loading``, which knows the registries (algorithms, data
sources, tasks) the names in a config must come from, and each task's own defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# seeds are numpy's range; offsets added to it (per client, per expert) stay far below 2**64
MAX_SEED = 2**32 - 1
# train.precision: autocast dtype of the training step (see training.autocast_dtype)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# federation.allocation: the signal FedLEASE clusters clients by (algorithms/clustering.py)
ALLOCATIONS = ("lora-b", "embedding", "hybrid")


@dataclass
class ModelConfig:
    # a name of fedlease.tasks.TASKS: classification (a sequence encoder + a per-client
    # head) or generation (a causal LM); a task may change the defaults below (Task.defaults)
    task: str = "classification"
    # local Hugging Face model directory; "" = the default model of the task
    # (all-MiniLM-L6-v2 for classification, SmolLM2-135M-Instruct for generation)
    path: str = ""
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    max_length: int = 64  # tokens per example / per prompt (longer inputs are truncated)
    max_new_tokens: int = 16  # generation: answer tokens learned and generated


@dataclass
class LoRAConfig:
    rank: int = 4
    alpha: float = 16.0
    dropout: float = 0.05


@dataclass
class DatasetConfig:
    """One ``[[data.datasets]]`` table: a local data file (or saved ``datasets`` folder) that a
    Flower Datasets partitioner splits into clients of one task (see DATA.md, section 3)."""

    path: str = ""  # a .csv/.tsv/.parquet/.json/.jsonl file (or glob), or a save_to_disk folder
    format: str = ""  # "" = from the path: csv, tsv, parquet, json, disk
    name: str = ""  # the task name of its clients; "" = the file's stem
    split: str = ""  # a saved DatasetDict: the split to read; "" = all splits pooled
    # columns, classification
    text: str = "text"
    text_pair: str = ""  # "" = single-text examples
    label: str = "label"
    labels: list[str] = field(default_factory=list)  # label order; [] = sorted label values
    # columns, generation
    instruction: str = "instruction"
    input: str = "input"  # "" = no input column
    output: str = "output"
    # partitioning (Flower Datasets): iid | dirichlet | shard | pathological | natural
    partitioner: str = "iid"
    num_partitions: int = 4  # clients; natural: 0 = one per value of partition_by
    partition_by: str = ""  # column the partitioner reads; "" = the label column
    alpha: float = 0.5  # dirichlet: concentration (smaller = more label skew)
    min_partition_size: int = 10  # dirichlet: resample until every client has this many
    shards_per_partition: int = 2  # shard
    classes_per_partition: int = 2  # pathological
    max_examples: int = 0  # use a seeded sample of this many rows first; 0 = all
    test_fraction: float = 0.2  # of each client's examples, held out for its test split

    @property
    def task_name(self) -> str:
        """The task of this dataset's clients: its ``name``, else the file's (folder's) stem."""
        return self.name or Path(self.path.rstrip("/")).name.split(".")[0]


@dataclass
class DataConfig:
    source: str = "builtin"  # builtin | glue | jsonl | datasets | instructions (generation)
    path: str = ""  # glue: the glue_data folder; jsonl: a folder of per-client files
    tasks: list[str] = field(default_factory=lambda: ["sentiment", "news", "spam", "uncertainty"])
    clients_per_task: int = 4
    train_per_client: int = 128
    test_per_client: int = 48
    # source = "datasets": the [[data.datasets]] tables, each partitioned into clients
    datasets: list[DatasetConfig] = field(default_factory=list)


@dataclass
class TrainConfig:
    lr: float = 3e-3
    weight_decay: float = 0.05
    batch_size: int = 16
    local_epochs: int = 1
    device: str = "cpu"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto: bf16 (or fp16) on CUDA, fp32 on CPU


@dataclass
class FederationConfig:
    algorithm: str = "fedlease"
    rounds: int = 8
    warmup_rounds: int = 3
    max_experts: int = 4  # M_max: the largest number of clusters tried
    # what FedLEASE clusters clients by: "embedding" (the mean frozen-model representation of
    # their training examples, one vector per client, computed before training; the default, as
    # it found the clients' tasks where the paper's signal did not, docs/results.md), "lora-b"
    # (the paper: their warm-up LoRA B matrices) or "hybrid" (both distances, each scaled to mean 1)
    allocation: str = "embedding"
    # std of the Gaussian noise a client adds to its (unit-length) embedding before uploading it
    embedding_noise: float = 0.0
    seed: int = 0
    # the server rejects a client upload holding a tensor of larger L2 norm (inf: no bound)
    max_update_norm: float = 100.0


@dataclass
class OutputConfig:
    dir: str = "runs/latest"
    # per-round metrics as TensorBoard events in the run folder (needs fedlease[tensorboard])
    tensorboard: bool = False


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
