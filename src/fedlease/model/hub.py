"""``model.path`` as a Hugging Face hub id (``org/name``): the local cache first, a download
only where the user allows one.

A local folder always wins. Otherwise a hub id is looked up in the cache ``huggingface_hub``
keeps (``$HF_HUB_CACHE``, default ``$HF_HOME/hub``: ``models--org--name/snapshots/<commit>``,
``refs/<revision>``). Only ``model.download = true`` fetches what the cache lacks, and never
with ``HF_HUB_OFFLINE=1``; then only the files a safetensors checkpoint and its tokenizer need
are fetched (no ``*.bin`` pickles, no ``*.py`` remote code).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fedlease.errors import ConfigError

# "org/name" (or a bare "name"), as the hub spells repository ids
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# what a safetensors checkpoint and its tokenizer are made of (config, tokenizer.json and
# vocabularies, sentencepiece models, chat templates); nothing that runs code or unpickles on
# load: no *.py (an auto_map's remote code, tokenizer_*.py), *.bin, *.pkl
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
TRUE_VALUES = ("1", "true", "yes", "on")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (huggingface_hub's own switch) says no network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_VALUES


def is_hub_id(path: str) -> bool:
    return HUB_ID.fullmatch(path) is not None and ".." not in path


def resolve_model_path(path: str, download: bool = False, revision: str = "") -> str:
    """The local folder of ``model.path``: the folder itself, or the cached snapshot of a hub
    id (fetched first if ``download`` allows and the environment is online)."""
    if Path(path).expanduser().is_dir():
        return str(Path(path).expanduser())
    if not is_hub_id(path):
        raise ConfigError(f"model.path = {path!r}: no such folder; expected a local model "
                          "folder or a Hugging Face hub id (org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = f"model.path = {path!r}" + (f" (model.revision = {revision!r})" if revision else "")
    try:
        return snapshot_download(path, revision=revision or None, local_files_only=True,
                                 allow_patterns=MODEL_FILES)
    except LocalEntryNotFoundError:
        pass
    if offline():
        raise ConfigError(f"{where}: not a folder and not in the Hugging Face cache, and "
                          "HF_HUB_OFFLINE=1 forbids a download; expected a local folder, or "
                          "fetch it once online with model.download = true")
    if not download:
        raise ConfigError(f"{where}: not a folder and not in the Hugging Face cache; set "
                          "model.download = true to fetch it (safetensors only), or give a "
                          "local folder")
    try:
        return snapshot_download(path, revision=revision or None, allow_patterns=MODEL_FILES)
    except Exception as err:  # network, authentication, unknown repository: one line each
        raise ConfigError(f"{where}: the download failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); expected a public "
                          "hub id, or HF_TOKEN for a gated one") from None
