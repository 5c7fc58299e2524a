"""The output folder of a run: config, metrics per round, clustering, plots, final adapters.

::

    OUT/config.toml        the configuration used
    OUT/metrics.json       per round, per client: accuracy (or ROUGE-L, exact match), loss, train
                           metrics, upload bytes; "metric": the primary one
    OUT/clustering.json    distance matrix, silhouette per k, assignment (FedLEASE)
    OUT/summary.txt        the table printed at the end
    OUT/plots/*.png        dendrogram, distance heat map, silhouette curve, metric per round
    OUT/adapters/<client>.safetensors   each client's final adapters, router and head

Files are written atomically (temp file + rename) so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from fedlease.config import dump_toml


def atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RunWriter:
    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)

    def start(self, config) -> None:
        """Create the folder and write the config; fails early if the folder is unwritable."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.dir / "config.toml", dump_toml(config))
        except OSError as err:
            raise OSError(f"cannot write to the output folder {self.dir}: {err.strerror}") \
                from None

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
        adapters.mkdir(exist_ok=True)
        for cid, (tensors, layout) in client_models.items():
            tensors = {k: v.contiguous() for k, v in tensors.items()}
            save_file(tensors, adapters / f"{cid}.safetensors",
                      metadata={"layout": json.dumps(layout)})
        plot_run(result, self.dir / "plots")
