"""Python overhead of the patch: whole sampling steps on the tiny UNet (compute small) with 0, 1 and 4 stacked
adapters, ours and the peer's, and microseconds per patched attn2 call measured on the patch objects themselves."""

from __future__ import annotations

import time
from typing import Any

import torch

from .. import models
from ..harness import Bench, Row, interleaved, ms

STEPS = 8
LAYERS_SD15 = 16
CALLS = 200


def _ours(bench: Bench, base: Any, n: int) -> Any:
    load, encode, apply = (bench.node(i) for i in ("LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter"))
    model = base
    with torch.inference_mode():
        for i in range(n):
            adapter = load.load(models.adapter_file(bench, seed=i))[0]
            prompt = encode.encode(models.clip_vision(bench).host, models.images(seed=i), "center")[0]
            model = apply.apply(model, adapter, prompt, 0.8, "linear", "concat", 0.0, 1.0, "V only")[0]
    return model


def _peer(bench: Bench, base: Any, n: int) -> Any:
    loader, advanced = bench.peer_node("IPAdapterModelLoader"), bench.peer_node("IPAdapterAdvanced")
    model = base
    with torch.inference_mode():
        for i in range(n):
            state = loader.load_ipadapter_model(models.adapter_file(bench, seed=i))[0]
            model = advanced.apply_ipadapter(model, state, weight=0.8, image=models.images(seed=i),
                                             clip_vision=models.clip_vision(bench).host)[0]
    return model


def _step_rows(bench: Bench, repeats: int) -> list[Row]:
    base = models.unet(bench).patcher
    positive, negative = models.conds()
    variants = {"plain": base}
    for n in (1, 4):
        variants[f"ours x{n}"] = _ours(bench, base, n)
        if bench.peer is not None:
            variants[f"peer x{n}"] = _peer(bench, base, n)
    times = interleaved({k: (lambda m=m: models.sample(m, positive, negative, STEPS)) for k, m in variants.items()},
                        repeats, bench.device)
    rows = []
    for n in (1, 4):
        ours = times[f"ours x{n}"] / times["plain"]
        peer = times.get(f"peer x{n}")
        peer_ratio = None if peer is None else peer / times["plain"]
        target = f"<= peer ({peer_ratio:.3f})" if peer_ratio is not None else "<= peer's"
        per_call = (times[f"ours x{n}"] - times["plain"]) / (STEPS * 2 * LAYERS_SD15)  # cfg: 2 rows, 1 call/layer
        rows.append(Row(f"tiny SD1.5 UNet, {STEPS} steps, {n} adapter(s): patched / plain",
                        f"{ours:.3f} ({ms(times[f'ours x{n}'])})",
                        "" if peer is None else f"peer {peer_ratio:.3f} ({ms(peer)})", ours, target,
                        None if peer_ratio is None else ours <= peer_ratio * 1.01,
                        f"{per_call * 1e6:.0f} us extra per patched layer call"))
    return rows


def _call_extra(patch_index: int) -> dict:
    return {"n_heads": 8, "dim_head": 40, "attn_precision": None, "cond_or_uncond": [1, 0], "uuids": [None, None],
            "sigmas": torch.tensor([1.0, 1.0]), "original_shape": [2, 4, 8, 8], "block": ("input", 1),
            "block_index": 0, "transformer_index": patch_index, "activations_shape": [2, 320, 8, 8]}


def _per_call_rows(bench: Bench, repeats: int) -> list[Row]:
    """Microseconds the patch adds to one attn2 call beyond the host's text attention (1 adapter, warm caches)."""
    import comfy.ldm.modules.attention as attention

    base = models.unet(bench).patcher
    patches = {"ours": _ours(bench, base, 1)}
    if bench.peer is not None:
        patches["peer"] = _peer(bench, base, 1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 320, generator=g) for n in (64, 77, 77))
    extra = _call_extra(0)
    calls = {"host attention": lambda: attention.optimized_attention(q, k, v, 8)}
    for name, model in patches.items():
        table = model.model_options["transformer_options"]["patches_replace"]["attn2"]
        patch = table.get(("input", 1, 0), table.get(("input", 1)))  # the peer keys SD1.5 layers without an index
        call_extra = dict(extra)
        if name == "ours":  # as in sampling: the model call's state is prepared once, before the layers run
            call_extra[bench.pack.module.ip_adapter.call_state.CALL_STATE_KEY] = patch.call_state(q, call_extra)
        calls[name] = lambda p=patch, e=call_extra: p(q, k, v, e)
    loops = {name: (lambda fn=fn: [fn() for _ in range(CALLS)]) for name, fn in calls.items()}
    with torch.inference_mode():
        times = interleaved(loops, repeats, bench.device)
    host = times["host attention"] / CALLS
    rows = []
    for name in patches:
        extra_us = (times[name] / CALLS - host) * 1e6
        rows.append(Row(f"one attn2 call, 1 adapter, {name}: added time", f"{extra_us:.0f} us", "", None, "", None,
                        f"host attention alone {host * 1e6:.0f} us"))
    return rows


def rows(bench: Bench, repeats: int) -> list[Row]:
    started = time.perf_counter()
    out = _step_rows(bench, repeats) + _per_call_rows(bench, repeats)
    out[-1].note += f"; section took {time.perf_counter() - started:.0f} s"
    return out
