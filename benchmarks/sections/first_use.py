"""First use, as a user meets it: load the adapter file, encode the reference, project it, sample the first step.
Ours (Load IP-Adapter -> Encode Image Prompt -> Apply IP-Adapter) against the peer's (IPAdapterModelLoader ->
IPAdapterAdvanced, which encodes and projects inside), each from a cold per-file cache."""

from __future__ import annotations

import torch

from .. import models
from ..harness import Bench, Row, interleaved, ratio_row


def _ours(bench: Bench, name: str, positive, negative) -> None:
    bench.pack.module.nodes.loaded._CACHE.clear()
    load, encode, apply = (bench.node(i) for i in ("LoadIPAdapter", "EncodeImagePrompt", "ApplyIPAdapter"))
    with torch.inference_mode():
        adapter = load.load(name)[0]
        prompt = encode.encode(models.clip_vision(bench).host, models.images(), "center")[0]
        model = apply.apply(models.unet(bench).patcher, adapter, prompt, 0.8, "linear", "concat", 0.0, 1.0,
                            "V only")[0]
    models.sample(model, positive, negative, steps=1)


def _peer(bench: Bench, name: str, positive, negative) -> None:
    loader, advanced = bench.peer_node("IPAdapterModelLoader"), bench.peer_node("IPAdapterAdvanced")
    with torch.inference_mode():
        state = loader.load_ipadapter_model(name)[0]
        model = advanced.apply_ipadapter(models.unet(bench).patcher, state, weight=0.8, image=models.images(),
                                         clip_vision=models.clip_vision(bench).host)[0]
    models.sample(model, positive, negative, steps=1)


def rows(bench: Bench, repeats: int) -> list[Row]:
    if bench.peer is None:
        return [Row("first use (load + encode + project + first step)", "", "", None, "<= peer's", None,
                    "needs --peer")]
    positive, negative = models.conds()
    out = []
    for kind in ("base",):  # the peer builds Plus resamplers at the published widths only (768 / 1280)
        name = models.adapter_file(bench, kind=kind, seed=5, dtype=torch.float16)
        times = interleaved({"ours": lambda n=name: _ours(bench, n, positive, negative),
                             "peer": lambda n=name: _peer(bench, n, positive, negative)}, repeats, bench.device)
        out.append(ratio_row(f"first use, {kind} (load + encode + project + first step) / peer's", times["ours"],
                             times["peer"], 1.0, "peer"))
    return out
