"""Memory the host can plan with: what the host's model management counts for a patched model's extra models (the
image K/V tables of every patched layer, computed at Apply; the adapter's weights are not needed for sampling), and
the peak memory Apply adds, against the adapter file's size."""

from __future__ import annotations

import os

import torch

from .. import models
from ..harness import Bench, Row

TARGET_PEAK = 1.10  # peak added by Apply <= adapter size + 10%


def _apply(bench: Bench, name: str):
    load, encode, apply = (bench.node(i) for i in ("LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter"))
    with torch.inference_mode():
        prompt = encode.encode(models.clip_vision(bench).host, models.images(), "center")[0]
        adapter = load.load(name)[0]
        return apply.apply(models.unet(bench).patcher, adapter, prompt, 0.8, "linear", "concat", 0.0, 1.0,
                           "V only")[0], adapter


def _counted(model) -> int:
    """Bytes of every extra model the host loads with `model` (what low-VRAM planning sees)."""
    unique = {id(m): m for m in model.model_patches_models()}  # every patched layer names the same adapter
    return sum(m.model_size() for m in unique.values())


def _kv_bytes(loaded) -> int:
    """Bytes of the K/V tables of one Apply: [reference, negative] rows of every layer's keys and values, in the
    model's dtype (float32 here)."""
    adapter = loaded.adapter
    widths = [adapter.layers.width(i) for i in adapter.layers.ip_indices]
    return sum(2 * 2 * adapter.spec.num_tokens * w for w in widths) * torch.float32.itemsize


def _peak_of_apply(bench: Bench, name: str) -> int:
    """Peak tensor bytes Apply alone adds (the file is loaded and the image encoded before): CUDA's allocator
    statistics on a GPU; on the CPU the running sum of every op's own allocations and frees, in time order, from
    torch's profiler."""
    load, encode, apply = (bench.node(i) for i in ("LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter"))
    with torch.inference_mode():
        prompt = encode.encode(models.clip_vision(bench).host, models.images(), "center")[0]
        adapter = load.load(name)[0]

    def run():
        with torch.inference_mode():
            return apply.apply(models.unet(bench).patcher, adapter, prompt, 0.8, "linear", "concat", 0.0, 1.0,
                               "V only")[0]

    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def rows(bench: Bench, repeats: int) -> list[Row]:
    import folder_paths

    out = []
    for kind in ("base", "plus"):
        name = models.adapter_file(bench, kind=kind, seed=7)
        size = os.path.getsize(folder_paths.get_full_path("ipadapter", name))
        model, adapter = _apply(bench, name)
        counted, kv = _counted(model), _kv_bytes(adapter)
        out.append(Row(f"{kind}: bytes the host counts for the patched model's extra models",
                       f"{counted / 2**20:.2f} MiB", f"K/V {kv / 2**20:.2f} MiB, file {size / 2**20:.2f} MiB", None,
                       "= the K/V", counted == kv))
        peak = _peak_of_apply(bench, name)
        out.append(Row(f"{kind}: peak memory added by Apply / adapter size", f"{peak / 2**20:.2f} MiB",
                       f"{size / 2**20:.2f} MiB", peak / size, f"<= {TARGET_PEAK}", peak / size <= TARGET_PEAK))
    return out
