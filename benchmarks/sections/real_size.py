"""A real-shaped SDXL UNet (2.6B parameters, random fan-in-scaled weights, the host's own model class) with one base
and one Plus adapter of the published shapes, against the same UNet unpatched: the ratio of sampling-step times.
The image prompt is made of random encodings of the right widths (a full-size CLIP vision encoder would dominate
memory and is not what this measures). Needs about 12 GiB of memory in float32."""

from __future__ import annotations

import torch

from tests.factories import OFFICIAL, materialize

from ..harness import Bench, Row, interleaved, ratio_row

LATENT = 32  # 256 px: SDXL's full depth at a CPU-friendly size
STEPS = 2
TARGETS = {"ip-adapter_sdxl_vit-h": 1.02, "ip-adapter-plus_sdxl_vit-h": 1.04}


def _fill_(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.ones_like(p) if "norm" in name and name.endswith("weight") else torch.zeros_like(p))
            else:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g)


def _sdxl(bench: Bench):
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.SDXL(dict(comfy.supported_models.SDXL.unet_config, num_res_blocks=[2, 2, 2],
                                                    channel_mult=[1, 2, 4], transformer_depth_middle=10,
                                                    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                                                    num_head_channels=64, in_channels=4, out_channels=4,
                                                    num_classes="sequential", use_spatial_transformer=True,
                                                    legacy=False, image_size=32))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=bench.device)
    _fill_(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, load_device=bench.device, offload_device=bench.device)


def _adapter_file(bench: Bench, stem: str) -> str:
    import os

    import folder_paths
    from safetensors.torch import save_file

    from tests.factories import flat

    name = f"{stem}.safetensors"
    path = os.path.join(folder_paths.get_folder_paths("ipadapter")[0], name)
    if not os.path.exists(path):
        spec = next(c for c in OFFICIAL if c.stem == stem)
        g = torch.Generator().manual_seed(1)
        groups = {k: materialize(v, "cpu", generator=g, dtype=torch.float16) for k, v in spec.shapes().items()}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file(flat(groups), path)
        folder_paths.filename_list_cache.clear()
    return name


def _prompt(bench: Bench):
    """Random encodings at ViT-H widths, built with the pack's own classes (the host loads the pack as a module of its
    own, whose enums are not those of a plain `import ip_adapter`)."""
    ClipEncoding, ImagePrompt = bench.pack.module.ip_adapter.ClipEncoding, bench.pack.module.ip_adapter.ImagePrompt
    g = torch.Generator().manual_seed(2)
    embeds = torch.randn(1, 1024, generator=g)
    hidden = torch.randn(1, 257, 1280, generator=g)
    return ImagePrompt(ClipEncoding(embeds, hidden), ClipEncoding(torch.zeros_like(embeds), hidden * 0))


def _conds():
    g = torch.Generator().manual_seed(3)
    size = {"width": 256, "height": 256, "crop_w": 0, "crop_h": 0, "target_width": 256, "target_height": 256}
    return ([[torch.randn(1, 77, 2048, generator=g), dict(size, pooled_output=torch.randn(1, 1280, generator=g))]],
            [[torch.randn(1, 77, 2048, generator=g), dict(size, pooled_output=torch.randn(1, 1280, generator=g))]])


def rows(bench: Bench, repeats: int) -> list[Row]:
    from .. import models

    base = _sdxl(bench)
    positive, negative = _conds()
    load, apply = bench.node("LoadIPAdapter"), bench.node("ApplyIPAdapter")
    variants = {"plain": base}
    for stem in TARGETS:
        with torch.inference_mode():
            adapter = load.load(_adapter_file(bench, stem))[0]
            variants[stem] = apply.apply(base, adapter, _prompt(bench), 0.8, "linear", "concat", 0.0, 1.0,
                                         "V only")[0]
    times = interleaved({k: (lambda m=m: models.sample(m, positive, negative, STEPS, size=LATENT))
                         for k, m in variants.items()}, max(2, repeats // 2), bench.device)
    return [ratio_row(f"real-shaped SDXL UNet, {LATENT * 8} px, {STEPS} steps, {stem} / plain", times[stem],
                      times["plain"], target, "plain") for stem, target in TARGETS.items()]
