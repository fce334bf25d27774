"""What every benchmark section shares: the host started in-process (the test harness's way), the pack and the peer
pack loaded as custom nodes, tiny stand-in models, and side-by-side timing.

Ratios, never absolute targets: each measurement interleaves the variants it compares (A, B, A, B, ...) after a
warm-up and takes medians, so load on the machine hits both sides alike.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.host import comfy_env  # noqa: E402

log = logging.getLogger("benchmarks")
WARMUP = 3


@dataclass
class Row:
    """One line of the results table."""

    what: str
    ours: str
    other: str = ""
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Bench:
    """The started host and what the sections need from it."""

    host: comfy_env.HostInfo
    pack: Any
    peer: Any | None
    device: torch.device
    dtype: torch.dtype
    scratch: Path
    cache: dict = field(default_factory=dict)

    def node(self, node_id: str) -> Any:
        return self.pack.node_class_mappings[node_id]()

    def peer_node(self, node_id: str) -> Any:
        return self.peer.node_class_mappings[node_id]() if self.peer is not None else None


def start(comfyui: str | None, peer: str | None, device: str) -> Bench:
    """Start ComfyUI in this process (CPU unless `device` is cuda), load the pack and, if given, the peer pack."""
    environ = dict(os.environ, **({comfy_env.ENV_VAR: comfyui} if comfyui else {}))
    location = comfy_env.locate_comfyui(environ=environ)
    if location.path is None:
        raise SystemExit(location.problem or location.skip_reason)
    scratch = Path(tempfile.mkdtemp(prefix="ipadapter-bench-"))
    host = comfy_env.start_host(location, scratch, cpu=(device == "cpu"))
    pack = comfy_env.load_pack()
    other = comfy_env.load_pack(Path(peer)) if peer else None
    torch_device = torch.device(device)
    dtype = torch.float32 if device == "cpu" else torch.float16
    return Bench(host, pack, other, torch_device, dtype, scratch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each variant, run in turn `repeats` times after WARMUP rounds."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(WARMUP + repeats):
        for name, fn in variants.items():
            _sync(device)
            start_time = time.perf_counter()
            fn()
            _sync(device)
            if round_ >= WARMUP:
                times[name].append(time.perf_counter() - start_time)
    gc.collect()
    return {name: statistics.median(values) for name, values in times.items()}


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def ratio_row(what: str, ours: float, other: float, target: float | None, other_name: str = "",
              note: str = "") -> Row:
    """ours / other with its target (<= target passes)."""
    r = ours / other
    return Row(what, ms(ours), f"{ms(other)} {other_name}".strip(), r, "" if target is None else f"<= {target}",
               None if target is None else r <= target, note)


def print_table(rows: list[Row]) -> None:
    header = ("measurement", "ours", "compared with", "ratio", "target", "ok", "note")
    cells = [header] + [(r.what, r.ours, r.other, "" if r.ratio is None else f"{r.ratio:.3f}", r.target,
                         "" if r.ok is None else ("yes" if r.ok else "NO"), r.note) for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(header))]
    for i, line in enumerate(cells):
        log.info("| %s |", " | ".join(str(c).ljust(w) for c, w in zip(line, widths)))
        if i == 0:
            log.info("|%s|", "|".join("-" * (w + 2) for w in widths))
