"""Where the simulator keeps the clients' local states (adapters, router, head) between rounds.

With every client training every round the states stay in memory (``MemoryStates``, a dict).
Under client sampling most clients sit out most rounds, and a thousand states in memory would
make memory grow with the federation: ``DiskStates`` keeps each one in a safetensors file and
loads it only when its client is sampled or evaluated.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path

from safetensors.torch import load_file, save_file

from fedlease.algorithms.messages import Tensors


class MemoryStates(dict):
    """Client id -> local state, in memory (an empty dict: no state yet)."""

    def has(self, client_id: str) -> bool:
        return bool(self.get(client_id))


class DiskStates(MutableMapping):
    """Client id -> local state, one ``<n>.safetensors`` per client in ``folder`` (a temporary
    folder, removed with this object, when None); an empty state is no file. Only the state
    asked for is in memory."""

    def __init__(self, client_ids: list[str], folder: str | Path | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="fedlease-states-") if folder is None \
            else None
        self.folder = Path(self._tmp.name if self._tmp else folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        # file names from the position: client ids may hold characters a file name cannot
        self._files = {cid: self.folder / f"{i:06d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', cid)}"
                       ".safetensors" for i, cid in enumerate(client_ids)}

    def _path(self, client_id: str) -> Path:
        if client_id not in self._files:
            raise KeyError(client_id)
        return self._files[client_id]

    def has(self, client_id: str) -> bool:
        return self._path(client_id).exists()

    def __getitem__(self, client_id: str) -> Tensors:
        path = self._path(client_id)
        return load_file(path) if path.exists() else {}

    def __setitem__(self, client_id: str, state: Tensors) -> None:
        path = self._path(client_id)
        if not state:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
        tmp.replace(path)

    def __delitem__(self, client_id: str) -> None:
        self._path(client_id).unlink(missing_ok=True)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def client_states(client_ids: list[str], on_disk: bool, folder: str | Path | None = None):
    """The store for ``client_ids``, every state empty: on disk (``folder``, else a temporary
    one) or in memory."""
    if on_disk:
        return DiskStates(client_ids, folder)
    return MemoryStates({cid: {} for cid in client_ids})



