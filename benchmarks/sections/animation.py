"""Animation and long references: peak tensor memory of encoding 256 frames 16 per pass against all at once (the
host's CLIP vision model at ViT-H/14 widths, random weights), and the sampling cost of one image per frame (Apply
IP-Adapter Batch, 16 images) against one image for every frame (Apply IP-Adapter): the time one patched
attention call adds on a 16-frame batch.

Memory is counted as bytes of live tensor storage (tests/memory_tracking.py): exact and machine independent. Depth
does not change the peak (layers run one after another and only the penultimate states are kept), so the encoder
has ENCODER_LAYERS layers instead of 32 to keep the section short.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from tests.memory_tracking import PeakTensorMemory, tensor_bytes

from .. import models
from ..harness import Bench, Row, interleaved

FRAMES, BATCH = 256, 16
FRAME_SIDE = 256  # reference frames; the encoder's preprocessing resizes them to 224
ENCODER_LAYERS = 2
MB = 1 << 20
#: "Within a small multiple of one chunk" (the issue's target for the working set beyond the result).
CHUNK_MULTIPLE = 2.0
LATENT_FRAMES, CALLS = 16, 200


def _vit_h_encoder(bench: Bench) -> Any:
    """The host's ClipVisionModel with ViT-H/14 widths and ENCODER_LAYERS layers, small random weights."""
    import comfy.clip_vision

    config = json.loads((Path(comfy.clip_vision.__file__).parent / "clip_vision_config_h.json").read_text())
    config["num_hidden_layers"] = ENCODER_LAYERS
    path = bench.scratch / "vit_h_shallow.json"
    path.write_text(json.dumps(config))
    encoder = comfy.clip_vision.ClipVisionModel(str(path))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in encoder.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return encoder


def _peak(module, encoder, frames: torch.Tensor, batch_size: int) -> tuple[int, int]:
    """(peak bytes, bytes of the result) of one encoding."""
    with torch.inference_mode(), PeakTensorMemory() as memory:
        out = module.encode_images(encoder, frames, module.Prep(crop="center", batch_size=batch_size))
    return memory.peak, tensor_bytes(out.image_embeds, out.hidden_states)


def _memory_rows(bench: Bench) -> list[Row]:
    encode_module = bench.pack.module.nodes.encode_image_prompt
    encoder = _vit_h_encoder(bench)
    frames = torch.rand(FRAMES, FRAME_SIDE, FRAME_SIDE, 3, generator=torch.Generator().manual_seed(1))
    one_chunk, _ = _peak(encode_module, encoder, frames[:BATCH], BATCH)
    chunked, result = _peak(encode_module, encoder, frames, BATCH)
    one_pass, _ = _peak(encode_module, encoder, frames, 0)
    beyond = (chunked - result) / one_chunk
    return [
        Row(f"encode {FRAMES} frames (ViT-H widths), {BATCH} per pass: peak beyond the result / one chunk's peak",
            f"{(chunked - result) / MB:.0f} MB", f"{one_chunk / MB:.0f} MB", beyond, f"<= {CHUNK_MULTIPLE}",
            beyond <= CHUNK_MULTIPLE, f"peak {chunked / MB:.0f} MB, result {result / MB:.0f} MB"),
        Row(f"encode {FRAMES} frames: all in one pass / {BATCH} per pass, peak", f"{chunked / MB:.0f} MB",
            f"{one_pass / MB:.0f} MB one pass", one_pass / chunked, "", None, "tensor bytes, exact"),
    ]


def _apply(bench: Bench, base: Any, node_id: str, n_images: int) -> Any:
    adapter = bench.node("LoadIPAdapter").load(models.adapter_file(bench))[0]
    with torch.inference_mode():
        prompt = bench.node("EncodeImagePrompt").encode(models.clip_vision(bench).host, models.images(n_images),
                                                        "center")[0]
        if node_id == "ApplyIPAdapterBatch":
            return bench.node(node_id).apply(base, adapter, prompt, 0.8, "linear", 0.0, 1.0, "V only")[0]
        return bench.node(node_id).apply(base, adapter, prompt, 0.8, "linear", "concat", 0.0, 1.0, "V only")[0]


def _frame_batch_rows(bench: Bench, repeats: int) -> list[Row]:
    """Time one patched attn2 call on a 16-frame batch under CFG (32 rows): one image per frame against one image for
    every frame, each minus the host's own attention (what the patch adds)."""
    import comfy.ldm.modules.attention as attention

    base = models.unet(bench).patcher
    models_by_variant = {"one image": _apply(bench, base, "ApplyIPAdapter", 1),
                         "one per frame": _apply(bench, base, "ApplyIPAdapterBatch", LATENT_FRAMES)}
    rows_ = 2 * LATENT_FRAMES
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(rows_, n, 320, generator=g) for n in (64, 77, 77))
    extra = {"n_heads": 8, "dim_head": 40, "attn_precision": None, "cond_or_uncond": [1, 0], "uuids": [None, None],
             "sigmas": torch.ones(rows_), "original_shape": [rows_, 4, 8, 8], "block": ("input", 1),
             "block_index": 0, "transformer_index": 0}
    calls = {"host attention": lambda: attention.optimized_attention(q, k, v, 8)}
    for name, model in models_by_variant.items():
        patch = model.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
        calls[name] = lambda p=patch: p(q, k, v, extra)  # one extra dict: a model call's caches are shared
    loops = {name: (lambda fn=fn: [fn() for _ in range(CALLS)]) for name, fn in calls.items()}
    with torch.inference_mode():
        times = interleaved(loops, repeats, bench.device)
    added = {name: (times[name] - times["host attention"]) / CALLS for name in models_by_variant}
    r = added["one per frame"] / added["one image"]
    return [Row(f"one attn2 call, {LATENT_FRAMES} frames x cfg: added time, Batch ({LATENT_FRAMES} images) / Apply "
                "(1 image)", f"{added['one per frame'] * 1e6:.0f} us", f"{added['one image'] * 1e6:.0f} us", r, "",
                None, f"host attention alone {times['host attention'] / CALLS * 1e6:.0f} us")]


def rows(bench: Bench, repeats: int) -> list[Row]:
    started = time.perf_counter()
    out = _frame_batch_rows(bench, repeats) + _memory_rows(bench)
    out[-1].note += f"; section took {time.perf_counter() - started:.0f} s"
    return out
