"""The output folder of a run: config, metrics per round, clustering, plots, final adapters.

::

    OUT/config.toml        the configuration used
    OUT/metrics.json       per round, per client: accuracy (or ROUGE-L, exact match), loss, train
                           metrics, upload bytes; "metric": the primary one
    OUT/metrics.csv        the same per-round client metrics as a table (reporting/tracking.py)
    OUT/tensorboard/       the same as TensorBoard events, with output.tensorboard = true
    OUT/clustering.json    distance matrix, silhouette per k, assignment (FedLEASE)
    OUT/data.json          per client: task, train / test sizes, label counts (before training)
    OUT/summary.txt        the table printed at the end
    OUT/plots/*.png        dendrogram, distance heat map, silhouette curve, metric per round,
                           examples per client by label
    OUT/adapters/<client>.safetensors   each client's final adapters, router and head
    OUT/adapters/server.safetensors     the server's experts after the last round (if it has any)
    OUT/adapters/warmup/<client>.safetensors  each client's warm-up LoRA and head (FedLEASE)
    OUT/run.json           what the run's models are: base model, layouts, labels (saved_models.py)
    OUT/checkpoint/        the state after the last finished round (see federation/checkpoint.py)
    OUT/fedlease-error.log the traceback of an error fedlease did not foresee (cli.py)

Every path in the folder is named here (the writer's methods, the constants and functions below);
the modules that read a run (saved_models, export, cli) take them from here.

Files are written atomically (temp file, fsync, rename) so a killed run never leaves half a file,
with the permissions the user's umask gives any new file. Nothing is written before the
configuration, the data and the model have been checked (``RunWriter.check`` only reads), and a
folder that holds another run is refused unless the run resumes it or overwrites it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save as save_tensors

from fedlease.config import RunConfig, config_to_dict, dump_toml
from fedlease.errors import ConfigError, OutputError
from fedlease.model.lora import AdapterLayout
from fedlease.reporting.files import atomic_write, atomic_write_bytes
from fedlease.reporting.tracking import CSV_FILE, TB_DIR, TensorBoardLog, metrics_csv

# clustering.json, summary and plots: a fixed part and one that grows with the clients (the
# default run's 16 clients: 0.2 MiB measured); per client and round of history in metrics.json
# and in the checkpoint.json being replaced and replacing it (about 330 + 2 x 550 bytes measured)
REPORT_BYTES = 2**17
CLIENT_REPORT_BYTES = 2**14
HISTORY_BYTES = 1536
# margin over the files a run is known to write (file system blocks, safetensors headers)
SPACE_SAFETY_FACTOR = 1.5
# what a run writes into its folder (``--overwrite`` removes exactly these); any one of
# RUN_MARKERS means the folder holds a run, finished or interrupted
CONFIG_FILE = "config.toml"  # the configuration the run used (a resume reads it)
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoint"  # the server checkpoint (fedlease.federation.checkpoint)
ADAPTERS_DIR = "adapters"
SERVER_ADAPTERS = f"{ADAPTERS_DIR}/server.safetensors"  # the server's experts (if any)
RUN_FILE = "run.json"  # what the run's models are (describe_run; read by fedlease.saved_models)
FORMAT_VERSION = 1  # of run.json and of an exported model's fedlease_model.json
# the config sections a model needs to be rebuilt and run as in the run
MODEL_SECTIONS = ("model", "lora", "train")
ERROR_LOG = "fedlease-error.log"
RUN_OUTPUTS = (CONFIG_FILE, METRICS_FILE, "clustering.json", "data.json", "summary.txt",
               "result.json", "plots", ADAPTERS_DIR, CHECKPOINT_DIR, "metrics.csv", RUN_FILE,
               "tensorboard", ERROR_LOG)
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR)


def client_adapters(client_id: str) -> str:
    """A client's final adapters, router and head, relative to the run folder."""
    return f"{ADAPTERS_DIR}/{client_id}.safetensors"


def warmup_adapters(client_id: str) -> str:
    """A client's warm-up LoRA and head (FedLEASE), relative to the run folder."""
    return f"{ADAPTERS_DIR}/warmup/{client_id}.safetensors"


def estimate_run_bytes(client_bytes: int, server_bytes: int, num_clients: int,
                       rounds: int) -> int:
    """Disk a run needs at its peak, times ``SPACE_SAFETY_FACTOR``: while a round's checkpoint
    replaces the previous one, both are on disk (every client's state and the server's,
    twice). The final adapters (one client state each) are written after the last old
    checkpoint is gone, so they do not add to that peak. The reports grow with clients x rounds
    (metrics.json and the checkpoint's copy of the history)."""
    checkpoints = 2 * (num_clients * client_bytes + server_bytes)
    reports = REPORT_BYTES + num_clients * (CLIENT_REPORT_BYTES + HISTORY_BYTES * rounds)
    return int(SPACE_SAFETY_FACTOR * (checkpoints + reports))


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists: where a new folder would be made."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def model_config(config: RunConfig, model_path: str) -> dict:
    """The sections of ``config`` a saved model needs, with the base model's absolute path."""
    sections = {name: dict(config_to_dict(config)[name]) for name in MODEL_SECTIONS}
    sections["model"]["path"] = os.path.abspath(model_path)
    return sections


def describe_run(config: RunConfig, model_path: str, clients: dict[str, dict],
                 server_experts: int = 0, warmup: bool = False) -> dict:
    """``run.json``'s content. ``clients``: id -> ``{"task", "labels", "layout"}``;
    ``server_experts``: how many experts ``adapters/server.safetensors`` holds (0: none);
    ``warmup``: each client's warm-up LoRA is in ``adapters/warmup/``."""
    described = {}
    for cid, info in clients.items():
        entry = {**info, "weights": client_adapters(cid)}
        if warmup:
            entry["warmup_weights"] = warmup_adapters(cid)
        described[cid] = entry
    server = ({"weights": SERVER_ADAPTERS, "num_experts": server_experts}
              if server_experts else None)
    return {"format": "fedlease-run", "version": FORMAT_VERSION,
            "algorithm": config.federation.algorithm, "config": model_config(config, model_path),
            "clients": described, "server": server}


class RunWriter:
    """The run's output folder. ``resume``: the run continues the one in the folder;
    ``overwrite``: the run replaces it (its outputs are removed when the new run starts)."""

    def __init__(self, out_dir: str | Path, resume: bool = False, overwrite: bool = False):
        self.dir = Path(out_dir)
        self.tensorboard: TensorBoardLog | None = None
        self.resume = resume
        self.overwrite = overwrite

    def existing_run(self) -> list[str]:
        """The files that show the folder holds a run (empty: it does not)."""
        return [name for name in RUN_MARKERS if (self.dir / name).exists()]

    def check(self) -> None:
        """Everything about the folder that can fail, without writing anything: it must be (or
        become) a writable folder (else ``OutputError``), and must not hold another run unless
        resuming or overwriting it (else ``ConfigError``)."""
        existing = nearest_existing(self.dir)
        if not existing.is_dir():
            raise OutputError(f"cannot write to the output folder {self.dir}: {existing} is a "
                              "file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to the output folder {self.dir}: {existing} is not "
                              "writable")
        found = self.existing_run()
        if found and not (self.resume or self.overwrite):  # a user's choice: exit code 2
            raise ConfigError(
                f"the output folder {self.dir} holds another run ({', '.join(found)}); resume "
                f"it with `fedlease run --resume {self.dir}`, choose another output folder "
                "(--out / output.dir), or pass --overwrite to replace its results")

    def start(self, config) -> None:
        """Create the folder (clearing the old run's outputs when overwriting) and write the
        config; the first write of the run, after everything else was checked."""
        self.check()
        try:
            if self.overwrite and not self.resume:
                self.clear()
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot write to the output folder {self.dir}: "
                              f"{err.strerror or err}") from None
        try:
            atomic_write(self.dir / CONFIG_FILE, dump_toml(config))
        except OutputError as err:
            raise OutputError(f"cannot write to the output folder {self.dir}: {err}") from None
        if config.output.tensorboard:
            self.tensorboard = TensorBoardLog(self.dir / TB_DIR)

    def clear(self) -> None:
        """Remove what an earlier run wrote (``RUN_OUTPUTS`` and their temp files), nothing
        else: no stale plot, adapter or clustering stays beside the new run's."""
        for name in RUN_OUTPUTS:
            for path in [self.dir / name, *self.dir.glob(f".{name}.*")]:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()

    def check_free_space(self, needed_bytes: int) -> None:
        """Fail before training when the folder's file system cannot hold the run's files."""
        existing = nearest_existing(self.dir)
        free = shutil.disk_usage(existing).free
        if free < needed_bytes:
            raise OutputError(f"the output folder {self.dir} has {free / 2**20:.1f} MiB free; "
                              f"this run writes about {needed_bytes / 2**20:.1f} MiB "
                              "(checkpoints, adapters, reports): free some space or choose "
                              "another output.dir")

    def write_data(self, data: dict) -> None:
        """``data.json``: what each client holds (``reporting.data_report``)."""
        atomic_write(self.dir / "data.json", json.dumps(data, indent=1))

    def write_round(self, result) -> None:
        payload = {"algorithm": result.config.federation.algorithm, "metric": result.metric,
                   "tasks": result.tasks, "rounds": result.history}
        atomic_write(self.dir / METRICS_FILE, json.dumps(payload, indent=1))
        atomic_write(self.dir / CSV_FILE, metrics_csv(result.history, result.tasks))
        if self.tensorboard and result.history:
            self.tensorboard.log_round(result.history[-1])
        if result.report:
            atomic_write(self.dir / "clustering.json", json.dumps(result.report, indent=1))

    def write_tensors(self, name: str, tensors: dict, layout: dict | None = None) -> None:
        """``OUT/<name>`` (e.g. ``adapters/<client>.safetensors``), the layout in its metadata."""
        path = self.dir / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create {path.parent}: {err.strerror or err}") from None
        metadata = None if layout is None else {"layout": json.dumps(layout)}
        atomic_write_bytes(path, save_tensors({k: v.contiguous() for k, v in tensors.items()},
                                              metadata=metadata))

    def write_server_experts(self, experts: dict) -> None:
        """The server's experts after the last round (``SERVER_ADAPTERS``)."""
        self.write_tensors(SERVER_ADAPTERS, experts)

    def write_error_log(self, text: str) -> Path:
        """``ERROR_LOG`` in the folder (one of the run's outputs: ``--overwrite`` removes it)."""
        path = self.dir / ERROR_LOG
        path.write_text(text)
        return path

    def write_warmup_adapters(self, states: dict[str, dict]) -> None:
        """Each client's warm-up LoRA and head (``fedlease export --warmup`` reads them)."""
        for cid, state in states.items():
            self.write_tensors(warmup_adapters(cid), state, AdapterLayout().to_config())

    def finish(self, result, client_models: dict[str, tuple[dict, dict]],
               description: dict | None = None) -> None:
        """The final reports and each client's model; ``description`` (``run.json``,
        ``describe_run``) is written last, once the files it names exist."""
        from fedlease.reporting.plots import plot_run
        from fedlease.reporting.summary import summary_table

        self.write_round(result)
        atomic_write(self.dir / "summary.txt", summary_table(result) + "\n")
        for cid, (tensors, layout) in client_models.items():
            self.write_tensors(client_adapters(cid), tensors, layout)
        plot_run(result, self.dir / "plots")
        if result.privacy:
            atomic_write(self.dir / "privacy.json", json.dumps(result.privacy, indent=1))
            if description is not None:
                description = {**description, "privacy": result.privacy}
        if description is not None:
            atomic_write(self.dir / RUN_FILE, json.dumps(description, indent=1))
        if self.tensorboard:
            self.tensorboard.close()
