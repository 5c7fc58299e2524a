"""A client's privacy ledger on its own disk: what its data has released, kept across processes
and runs (a Flower node: ``node_config["privacy-ledger"]``, a folder; one file per client).

Flower's ``context.state`` does not survive a resumed run (a new Flower run), and a SuperNode
starts a process per message, so neither can hold the accounting: a resumed run would grant a
fresh budget, and a re-requested allocation vector would get fresh, uncounted noise. The ledger
is read before every release, and written before the release leaves the client: the
accountant's history (``accounting.Mechanism`` entries, the vector's included from the start)
and the allocation vector once released (sent again as it is: post-processing, no new cost). A
crash between the write and the send over-counts, never under-counts. A new budget for the
same data is the operator's decision: a new ledger file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fedlease.errors import DataError
from fedlease.privacy.accounting import Mechanism


@dataclass(frozen=True)
class PrivacyLedger:
    path: Path  # one client's JSON file

    @classmethod
    def in_folder(cls, folder: str | Path, client_id: str) -> PrivacyLedger:
        folder = Path(folder).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"node_config privacy-ledger = {str(folder)!r}: cannot create the "
                            f"folder ({err.strerror or err}); expected a writable folder on "
                            "the node") from None
        return cls(folder / f"{client_id}.json")

    def _read(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            content = json.loads(self.path.read_text())
            if not isinstance(content, dict):
                raise ValueError("not a JSON object")
            return content
        except (OSError, ValueError) as err:
            raise DataError(f"privacy ledger {self.path}: unreadable ({err}); it is the only "
                            "record of what this client's data has spent, so nothing is "
                            "released until it is restored") from None

    def _write(self, content: dict) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.urandom(6).hex()}.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(content))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def history(self) -> list[Mechanism] | None:
        """The history spent so far (None: nothing recorded yet)."""
        rows = self._read().get("history")
        return None if rows is None else [(float(z), float(q), int(s)) for z, q, s in rows]

    def record(self, history: list[Mechanism]) -> None:
        """Record ``history`` (what is spent once the release about to leave has left)."""
        self._write({**self._read(), "history": [list(entry) for entry in history]})

    def embedding(self) -> torch.Tensor | None:
        values = self._read().get("embedding")
        return None if values is None else torch.tensor(values, dtype=torch.float32)

    def record_embedding(self, vector: torch.Tensor, history: list[Mechanism]) -> None:
        """Record the released vector, with the history that counts it."""
        self._write({**self._read(), "embedding": vector.tolist(),
                     "history": [list(entry) for entry in history]})
