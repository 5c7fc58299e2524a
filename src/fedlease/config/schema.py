"""The run configuration's typed sections: what a TOML config file holds, and its defaults.

A leaf module, so every part of the package can name these types; reading, type-checking and
writing a config file is ``fedlease.config.loading``; what the names in a config must be and each
registry entry's own checks and defaults are ``fedlease.configure``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

# seeds are numpy's range; offsets added to it (per client, per expert) stay far below 2**64
MAX_SEED = 2**32 - 1
# train.precision: autocast dtype of the training step (see model/precision.py)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# settings of how a run uses its machine, not of what it computes: a resumed run or a reused
# comparison may change them (federation/checkpoint.py, experiments/compare.py)
MACHINE_SETTINGS = {("model", "download"), ("train", "check_memory"),
                    ("train", "gradient_checkpointing")}


@dataclass
class ModelConfig:
    # a name of fedlease.tasks.TASKS: classification (a sequence encoder + a per-client
    # head) or generation (a causal LM); a task may change the defaults below (Task.defaults)
    task: str = "classification"
    # local Hugging Face model directory; "" = the default model of the task
    # (all-MiniLM-L6-v2 for classification, SmolLM2-135M-Instruct for generation)
    path: str = ""
    # names of the linear layers that get LoRA adapters (a suffix of the module name); the
    # generation task's default is ["q_proj", "v_proj"]
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    max_length: int = 64  # tokens per example / per prompt (longer inputs are truncated)
    max_new_tokens: int = 16  # generation: answer tokens learned and generated
    # a hub id in path: fetch what the local Hugging Face cache lacks (safetensors only; never
    # with HF_HUB_OFFLINE=1); false: the cache only (model/hub.py)
    download: bool = False
    revision: str = ""  # a hub id's branch, tag or commit; "" = main
    # the frozen base's linear layers: none | 8bit | 4bit (NF4, bf16 compute), bitsandbytes;
    # adapters, routers and heads stay float32
    quantization: str = "none"


@dataclass
class LoRAConfig:
    rank: int = 4  # r: the inner dimension of every LoRA (A is r x d_in, B is d_out x r)
    alpha: float = 16.0  # the LoRA update is scaled by alpha / rank
    dropout: float = 0.05  # dropout on the adapters' input while training


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
    label: str = "label"  # the label column
    labels: list[str] = field(default_factory=list)  # label order; [] = sorted label values
    # columns, generation
    instruction: str = "instruction"
    input: str = "input"  # "" = no input column
    output: str = "output"  # the answer column
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
    # builtin / glue / instructions: the tasks of the federation (builtin: sentiment, news, spam,
    # uncertainty; glue: SST-2, QNLI, MRPC, QQP; instructions: DATA.md section 4)
    tasks: list[str] = field(default_factory=lambda: ["sentiment", "news", "spam", "uncertainty"])
    clients_per_task: int = 4  # builtin / glue / instructions: clients made of each task
    train_per_client: int = 128  # builtin / glue / instructions: training examples per client
    test_per_client: int = 48  # builtin / glue / instructions: test examples per client
    # source = "datasets": the [[data.datasets]] tables, each partitioned into clients
    datasets: list[DatasetConfig] = field(default_factory=list)
    # builtin / glue: the label mix of each client, drawn per client from Dirichlet(label_skew)
    # over the task's labels (smaller = more skewed); 0 = every client label-balanced
    label_skew: float = 0.0


@dataclass
class TrainConfig:
    lr: float = 3e-3  # AdamW learning rate of the local update
    weight_decay: float = 0.05  # AdamW weight decay
    batch_size: int = 16  # examples per local step
    local_epochs: int = 1  # passes over the client's training examples per round
    device: str = "cpu"  # cpu, cuda or cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto: bf16 (or fp16) on CUDA, fp32 on CPU
    # recompute each layer's activations in the backward pass: less memory, more time
    gradient_checkpointing: bool = False
    # refuse a run whose estimated peak memory exceeds the device's free memory (model/memory.py)
    check_memory: bool = True


@dataclass
class FederationConfig:
    algorithm: str = "fedlease"  # fedlease list algorithms names them (plugins included)
    rounds: int = 8  # communication rounds, warm-up included
    # FedLEASE: rounds in which every client trains its own LoRA before the clustering
    warmup_rounds: int = 3
    max_experts: int = 4  # M_max: the largest number of clusters tried
    # what FedLEASE clusters clients by: "embedding" (the mean frozen-model representation of
    # their training examples, one vector per client, computed before training; the default, as
    # it found the clients' tasks where the paper's signal did not, docs/results.md), "lora-b"
    # (the paper: their warm-up LoRA B matrices) or "hybrid" (both distances, each scaled to mean
    # 1): a name of fedlease.algorithms.clustering.SIGNALS
    allocation: str = "embedding"
    # FedLEASE clusters the whole N x N distance up to this many clients; beyond it the same
    # rule runs on a seeded sample of this many and every other client joins the nearest
    # cluster by the same signal (time and memory bounded by the sample, never N x N)
    exact_allocation_clients: int = 1000
    # std of the Gaussian noise a client adds to its (unit-length) embedding before uploading it
    embedding_noise: float = 0.0
    seed: int = 0  # seeds the data split, the initial adapters, dropout and batch order
    # the server rejects a client upload holding a tensor of larger L2 norm (inf: no bound)
    max_update_norm: float = 100.0
    # how the server combines the uploads of a group (every client, or a cluster), per
    # coordinate: "mean" (weighted by training examples), "median" or "trimmed-mean"
    aggregation: str = "mean"
    # trimmed-mean: the fraction of a group's clients left out at each end, per coordinate
    # (floor(trim_fraction * n) each); below 0.5, so at least one client is left
    trim_fraction: float = 0.2
    # clients that train per round, drawn by a rule of (seed, round, client list) that every
    # runner shares (federation/sampling.py); 0 = all clients every round
    clients_per_round: int = 0
    # share of the round's trained clients evaluated in every round but the last (which
    # evaluates every client), drawn by the same rule on every runner (Flower's
    # fraction-evaluate sets it); 1 = all
    fraction_evaluate: float = 1.0
    # evaluate the clients every this many rounds, and always in the last one (with many test
    # examples an evaluation can cost more than a round's training); 1 = every round
    evaluate_every: int = 1
    # local steps a client that never trained (never sampled) takes by the newcomer protocol
    # before it is evaluated (docs/algorithms.md, "Newcomers"); 0: evaluated as it starts
    newcomer_steps: int = 0
    # every tensor of every message, both ways, travels as "float32", "bfloat16" or "int8"
    # (a per-tensor scale); the traffic meter counts those bytes (algorithms/wire.py)
    transport_precision: str = "float32"


@dataclass
class OutputConfig:
    dir: str = "runs/latest"  # the run folder (a folder holding a run is refused: --overwrite)
    # per-round metrics as TensorBoard events in the run folder (needs fedlease[tensorboard])
    tensorboard: bool = False


@dataclass
class PrivacyConfig:
    """Example-level differential privacy of each client's data (``fedlease.privacy``,
    docs/security.md): DP-SGD in the local update, and the allocation vector released under
    the same budget. Off (``epsilon = inf``) by default: runs are then exactly as without it."""

    epsilon: float = math.inf  # per client, for the whole run; inf = no DP
    delta: float = 0.0  # per client; 0 = the smaller of 1e-5 and 1/(10 n), n its training set
    max_grad_norm: float = 1.0  # per-example gradient clipping bound (all trainable tensors)
    # the share of epsilon the allocation vector (FedLEASE's embedding) is calibrated to on its
    # own; the DP-SGD steps get what is left of the composed budget
    embedding_share: float = 0.1
    # 0 = calibrated once so the whole run spends epsilon; > 0: this noise multiplier, and the
    # run stops before the round that would spend more than epsilon
    noise_multiplier: float = 0.0
    accountant: str = "rdp"  # rdp | prv (Opacus)
    # false: each client draws its noise and batches from a secret seed (os.urandom), as a
    # deployment must; true: from the seed the server sends, so runs are reproducible (an
    # experiment setting: the server could then remove the noise)
    seeded_noise: bool = False

    @property
    def enabled(self) -> bool:
        return self.epsilon < math.inf


@dataclass
class AttackConfig:
    """The attack harness (an experiment tool of the simulator, not a production path): the
    named clients behave maliciously (attacks.py)."""

    clients: list[str] = field(default_factory=list)  # [] = no attack
    # sign-flip: upload start - (trained - start); scale: start + scale * (trained - start),
    # shrunk to fit federation.max_update_norm; label-flip: train on wrong labels;
    # forged-embedding: upload the target client's representation vector (join its cluster)
    kind: str = "sign-flip"
    scale: float = 10.0  # kind = "scale": the factor on the client's update
    target: str = ""  # kind = "forged-embedding": the client whose cluster to join


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
