"""The output folder of a run: config, metrics per round, clustering, plots, final adapters.

::

    OUT/config.toml        the configuration used
    OUT/metrics.json       per round, per client: accuracy (or ROUGE-L, exact match), loss, train
                           metrics, upload bytes; "metric": the primary one
    OUT/clustering.json    distance matrix, silhouette per k, assignment (FedLEASE)
    OUT/data.json          per client: task, train / test sizes, label counts (before training)
    OUT/summary.txt        the table printed at the end
    OUT/plots/*.png        dendrogram, distance heat map, silhouette curve, metric per round,
                           examples per client by label
    OUT/adapters/<client>.safetensors   each client's final adapters, router and head
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
    the final adapters, and the reports."""
    return per_client_bytes * (3 * num_clients + 2 * max_experts) + REPORT_BYTES


class RunWriter:
    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)

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

    def check_free_space(self, needed_bytes: int) -> None:
        """Fail before training when the folder's file system cannot hold the run's files."""
        free = shutil.disk_usage(self.dir).free
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
        atomic_write(self.dir / "metrics.json", json.dumps(payload, indent=1))
        if result.report:
            atomic_write(self.dir / "clustering.json", json.dumps(result.report, indent=1))

    def finish(self, result, client_models: dict[str, tuple[dict, dict]]) -> None:
        from fedlease.reporting.plots import plot_run
        from fedlease.reporting.summary import summary_table

        self.write_round(result)
        atomic_write(self.dir / "summary.txt", summary_table(result) + "\n")
        adapters = self.dir / "adapters"
        try:
            adapters.mkdir(exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create {adapters}: {err.strerror or err}") from None
        for cid, (tensors, layout) in client_models.items():
            tensors = {k: v.contiguous() for k, v in tensors.items()}
            atomic_write_bytes(adapters / f"{cid}.safetensors",
                               save_tensors(tensors, metadata={"layout": json.dumps(layout)}))
        plot_run(result, self.dir / "plots")
