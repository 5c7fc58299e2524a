"""The output folder of a run: config, metrics per round, clustering, plots, final adapters.

::

    OUT/config.toml        the configuration used
    OUT/metrics.json       per round, per client: accuracy (or ROUGE-L, exact match), loss, train
                           metrics, upload bytes; "metric": the primary one
    OUT/metrics.csv        the same per-round client metrics as a table (reporting/tracking.py)
    OUT/events.out.tfevents.*  the same as TensorBoard events, with output.tensorboard = true
    OUT/clustering.json    distance matrix, silhouette per k, assignment (FedLEASE)
    OUT/summary.txt        the table printed at the end
    OUT/plots/*.png        dendrogram, distance heat map, silhouette curve, metric per round
    OUT/adapters/<client>.safetensors   each client's final adapters, router and head
    OUT/adapters/server.safetensors     the server's experts after the last round (if it has any)
    OUT/adapters/warmup/<client>.safetensors  each client's warm-up LoRA and head (FedLEASE)
    OUT/run.json           what the run's models are: base model, layouts, labels (saved_models.py)
    OUT/checkpoint/        the state after the last finished round (see runners/checkpoint.py)

Files are written atomically (temp file, fsync, rename) so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save as save_tensors

from fedlease.config import dump_toml
from fedlease.reporting.tracking import CSV_FILE, TensorBoardLog, metrics_csv

# metrics.json, clustering.json, summary and plots stay well below this
REPORT_BYTES = 20 * 2**20


class OutputError(OSError):
    """The output folder cannot take the run's files; the message names the folder or file."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` as a whole or not at all: temp file in the same folder, fsync, rename."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None


def atomic_write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def estimate_run_bytes(per_client_bytes: int, num_clients: int, max_experts: int) -> int:
    """Disk a run needs at its peak: two checkpoints of every client state while one replaces
    the other, the server's experts (at most ``max_experts`` client-sized states, also twice),
    the final adapters, the warm-up LoRAs and final server experts, and the reports."""
    return per_client_bytes * (4 * num_clients + 3 * max_experts) + REPORT_BYTES


class RunWriter:
    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.tensorboard: TensorBoardLog | None = None

    def start(self, config) -> None:
        """Create the folder and write the config; fails early if the folder is unwritable."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot write to the output folder {self.dir}: {err.strerror}") \
                from None
        try:
            atomic_write(self.dir / "config.toml", dump_toml(config))
        except OutputError as err:
            raise OutputError(f"cannot write to the output folder {self.dir}: {err}") from None
        if config.output.tensorboard:
            self.tensorboard = TensorBoardLog(self.dir)

    def check_free_space(self, needed_bytes: int) -> None:
        """Fail before training when the folder's file system cannot hold the run's files."""
        free = shutil.disk_usage(self.dir).free
        if free < needed_bytes:
            raise OutputError(f"the output folder {self.dir} has {free / 2**20:.1f} MiB free; "
                              f"this run writes about {needed_bytes / 2**20:.1f} MiB "
                              "(checkpoints, adapters, reports): free some space or choose "
                              "another output.dir")

    def write_round(self, result) -> None:
        payload = {"algorithm": result.config.federation.algorithm, "metric": result.metric,
                   "tasks": result.tasks, "rounds": result.history}
        atomic_write(self.dir / "metrics.json", json.dumps(payload, indent=1))
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

    def finish(self, result, client_models: dict[str, tuple[dict, dict]],
               description: dict | None = None) -> None:
        """The final reports and each client's model; ``description`` (``run.json``, see
        ``fedlease.saved_models``) is written last, once the files it names exist."""
        from fedlease.reporting.plots import plot_run
        from fedlease.reporting.summary import summary_table

        self.write_round(result)
        atomic_write(self.dir / "summary.txt", summary_table(result) + "\n")
        for cid, (tensors, layout) in client_models.items():
            self.write_tensors(f"adapters/{cid}.safetensors", tensors, layout)
        plot_run(result, self.dir / "plots")
        if description is not None:
            atomic_write(self.dir / "run.json", json.dumps(description, indent=1))
        if self.tensorboard:
            self.tensorboard.close()
