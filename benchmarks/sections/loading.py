"""LoadIPAdapter against reading every byte of the same file (the floor for any loader), on a file with the real
SD1.5 Plus layout in fp16 as published; and the peer's loader on the same file."""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from tests.factories import OFFICIAL, flat, materialize

from ..harness import Bench, Row, interleaved, ratio_row

TARGET = 1.2
STEM = "ip-adapter-plus_sd15"


def _official_file(bench: Bench) -> tuple[str, str]:
    import folder_paths

    name = f"{STEM}.safetensors"
    folder = folder_paths.get_folder_paths("ipadapter")[0]
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        spec = next(c for c in OFFICIAL if c.stem == STEM)
        g = torch.Generator().manual_seed(0)
        groups = {k: materialize(v, "cpu", generator=g, dtype=torch.float16) for k, v in spec.shapes().items()}
        os.makedirs(folder, exist_ok=True)
        save_file(flat(groups), path)
        folder_paths.filename_list_cache.clear()
    return name, path


def rows(bench: Bench, repeats: int) -> list[Row]:
    name, path = _official_file(bench)
    loaded = bench.pack.module.nodes.loaded

    def read_all() -> int:
        with open(path, "rb") as f:
            return len(f.read())

    def ours() -> object:
        loaded._CACHE.clear()  # measure a real load, not the per-file cache
        return bench.node("LoadIPAdapter").load(name)[0]

    variants = {"read": read_all, "ours": ours}
    if bench.peer is not None:
        peer_loader = bench.peer_node("IPAdapterModelLoader")
        variants["peer"] = lambda: peer_loader.load_ipadapter_model(name)[0]
    times = interleaved(variants, repeats, bench.device)
    size = os.path.getsize(path) / 2**20
    out = [ratio_row(f"LoadIPAdapter, {STEM} fp16 ({size:.0f} MiB) / reading its bytes", times["ours"],
                     times["read"], TARGET, "read")]
    if "peer" in times:
        out.append(ratio_row("peer's IPAdapterModelLoader / reading its bytes", times["peer"], times["read"], None,
                             "read"))
    return out
