"""Image K/V computed once per sampling run (ImageKV) against recomputing them at every step, side by side in one
process, on the full-size SD1.5 layer widths (CPU, float32). Prints the time ratio; no absolute targets.

    python benchmarks/bench_kv_cache.py [--steps 20] [--latent 32]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ip_adapter import SD15_LAYOUT, ImageKV, ImageTerm, IPAdapter, decoupled_attention  # noqa: E402
from ip_adapter.checkpoint import CheckpointGroups  # noqa: E402
from tests.factories import OFFICIAL, materialize  # noqa: E402

log = logging.getLogger("bench")
WARMUP_STEPS = 2
TEXT_TOKENS = 77
DOWNSAMPLE = {320: 1, 640: 2, 1280: 4}  # SD1.5 level of each width


def full_size_adapter() -> IPAdapter:
    spec = next(c for c in OFFICIAL if c.stem == "ip-adapter_sd15")
    shapes = spec.shapes()
    g = torch.Generator().manual_seed(0)
    groups = CheckpointGroups("ip-adapter_sd15.safetensors", materialize(shapes["image_proj"], "cpu", generator=g),
                              materialize(shapes["ip_adapter"], "cpu", generator=g, scale=0.02))
    return IPAdapter.from_groups(groups)


def run(adapter: IPAdapter, tokens: torch.Tensor, latent: int, steps: int, cached: bool) -> float:
    kv = ImageKV(adapter, tokens, torch.zeros_like(tokens))
    g = torch.Generator().manual_seed(1)
    inputs = []
    for layer in SD15_LAYOUT.layers:
        side = latent // DOWNSAMPLE[layer.width]
        q = torch.randn(2, side * side, layer.width, generator=g)
        k = torch.randn(2, TEXT_TOKENS, layer.width, generator=g)
        inputs.append((layer, q, k))
    start = 0.0
    for step in range(steps + WARMUP_STEPS):
        if step == WARMUP_STEPS:
            start = time.perf_counter()
        if not cached:
            kv.clear()
        for layer, q, k in inputs:
            ik, iv = kv.get(layer.checkpoint_index, q.device, q.dtype)
            decoupled_attention(q, k, k, layer.heads, [ImageTerm(ik[[1, 0]], iv[[1, 0]], 1.0)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--latent", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_grad_enabled(False)
    adapter = full_size_adapter()
    tokens = adapter.project(torch.randn(1, adapter.spec.clip_width))
    recompute = run(adapter, tokens, args.latent, args.steps, cached=False)
    cached = run(adapter, tokens, args.latent, args.steps, cached=True)
    log.info("SD1.5 full widths, latent %dx%d, %d steps, cond+uncond batch", args.latent, args.latent, args.steps)
    log.info("recompute K/V every step: %.3f s; cached once per run: %.3f s; ratio %.2fx",
             recompute, cached, recompute / cached)


if __name__ == "__main__":
    main()
