"""The patch under the host's TorchCompileModel wrapper: the same output as eager sampling, and no captured frame
beyond the unpatched model's (a graph break inside the patch, or a recompilation from step to step, would add one).

Frames are counted with torch._dynamo.testing.CompileCounter as the backend (graphs then run eagerly, so this works
on any machine); with `--device cuda` the host's own inductor backend also runs, timed against the compiled plain
model. The host uses PyTorch attention here (its default on GPUs; on the CPU its sub-quadratic attention breaks the
graph in every attention call, for the plain model too)."""

from __future__ import annotations

from typing import Any

import torch

from .. import models
from ..harness import Bench, Row, interleaved, ms

STEPS = 4
SAME = 1e-5


def _with_compile(model: Any, backend: Any) -> Any:
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    torch._dynamo.reset()
    compiled = model.clone()
    set_torch_compile_wrapper(compiled, backend=backend)
    return compiled


def _frames(model: Any, conds: tuple) -> tuple[int, torch.Tensor]:
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    out = models.sample(_with_compile(model, counter), *conds, STEPS)
    return counter.frame_count, out


def _patched(bench: Bench) -> Any:
    load, encode, apply = (bench.node(i) for i in ("LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter"))
    with torch.inference_mode():
        adapter = load.load(models.adapter_file(bench, kind="plus", seed=3))[0]
        prompt = encode.encode(models.clip_vision(bench).host, models.images(2), "center")[0]
        return apply.apply(models.unet(bench).patcher, adapter, prompt, 0.8, "linear", "concat", 0.0, 0.6,
                           "V only")[0]


def rows(bench: Bench, repeats: int) -> list[Row]:
    import comfy.ldm.modules.attention as attention

    saved = attention.optimized_attention, attention.optimized_attention_masked
    attention.optimized_attention = attention.optimized_attention_masked = attention.attention_pytorch
    try:
        conds = models.conds()
        plain, patched = models.unet(bench).patcher, _patched(bench)
        plain_frames, _ = _frames(plain, conds)
        patched_frames, compiled_out = _frames(patched, conds)
        eager_out = models.sample(patched, *conds, STEPS)
        diff = float((compiled_out - eager_out).abs().max())
        out = [Row(f"TorchCompileModel wrapper, {STEPS} steps, end_at 0.6: captured frames patched / plain",
                   str(patched_frames), f"plain {plain_frames}", patched_frames / plain_frames, "no extra frame",
                   patched_frames == plain_frames, f"max |compiled - eager| {diff:.1e} (target <= {SAME})")]
        if bench.device.type == "cuda":
            variants = {"plain": _with_compile(plain, "inductor"), "patched": _with_compile(patched, "inductor")}
            times = interleaved({k: (lambda m=m: models.sample(m, *conds, STEPS)) for k, m in variants.items()},
                                repeats, bench.device)
            out.append(Row("inductor: patched / plain sampling", ms(times["patched"]), ms(times["plain"]),
                           times["patched"] / times["plain"]))
        return out
    finally:
        attention.optimized_attention, attention.optimized_attention_masked = saved
