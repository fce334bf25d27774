"""The pack's benchmarks as one table: ratios measured side by side in one process, never absolute times.

    python benchmarks/run.py [--comfyui PATH] [--peer PATH] [--device cpu|cuda] [--sections a,b] [--repeats N]

Sections: overhead (patched / plain sampling steps and microseconds per patched layer call, ours and the peer's),
loading (LoadIPAdapter / reading every byte of the file), first_use (load + encode + project + first step, ours
and the peer's), memory (what the host's model management counts, peak added by Apply), compile (TorchCompileModel:
same output, graph breaks, recompilations), real_size (real-shaped SDXL UNet with random weights, base / Plus).
`--peer` is a checkout of cubiq/ComfyUI_IPAdapter_plus (never vendored here); without it the peer columns are empty.
CUDA rows use fp16 where `--device cuda` is given and a GPU is present.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import print_table, start  # noqa: E402

SECTIONS = ("overhead", "loading", "first_use", "memory", "compile", "real_size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", help="ComfyUI checkout (default: COMFYUI_PATH)")
    parser.add_argument("--peer", help="checkout of ComfyUI_IPAdapter_plus to compare with")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    out = logging.getLogger("benchmarks")
    out.addHandler(logging.StreamHandler(sys.stdout))
    out.setLevel(logging.INFO)
    out.propagate = False  # the host configures the root logger; the table goes to stdout on its own
    bench = start(args.comfyui, args.peer, args.device)
    rows = []
    for name in args.sections.split(","):
        module = importlib.import_module(f"benchmarks.sections.{name.strip()}")
        rows.extend(module.rows(bench, args.repeats))
    print_table(rows)


if __name__ == "__main__":
    main()
