"""Stand-in models and inputs for the benchmarks: the tests' tiny host UNets and CLIP vision, adapter files written
into the host's model folders, and text conditioning, built once per benchmark process."""

from __future__ import annotations

from typing import Any

import torch
from safetensors.torch import save_file

from tests.factories import flat
from tests.host import tiny_models
from tests.host.ipa_setup import adapter_groups
from tests.host.predict import random_text_cond

from .harness import Bench

LATENT = 8


def unet(bench: Bench, kind: str = tiny_models.SD15) -> tiny_models.TinyUNet:
    key = ("unet", kind)
    if key not in bench.cache:
        bench.cache[key] = tiny_models.build_tiny_unet(kind)
    return bench.cache[key]


def clip_vision(bench: Bench) -> tiny_models.TinyClipVision:
    if "clip" not in bench.cache:
        bench.cache["clip"] = tiny_models.build_tiny_clip_vision(bench.scratch / "configs")
    return bench.cache["clip"]


def adapter_file(bench: Bench, kind: str = "base", unet_kind: str = tiny_models.SD15, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> str:
    """An official-format adapter for the tiny UNet in the host's ipadapter folder; returns its file name."""
    import folder_paths

    name = f"bench-{kind}-{seed}-{str(dtype).split('.')[-1]}_{unet_kind}.safetensors"
    if ("file", name) in bench.cache:
        return name
    bench.cache[("file", name)] = True
    folder = folder_paths.get_folder_paths("ipadapter")[0]
    groups = adapter_groups(kind, unet(bench, unet_kind), clip_vision(bench), seed=seed)
    torch_groups = {g: {k: t.to(dtype) for k, t in sd.items()} for g, sd in groups.items()}
    import os

    os.makedirs(folder, exist_ok=True)
    save_file(flat(torch_groups), os.path.join(folder, name))
    folder_paths.filename_list_cache.clear()
    return name


def images(n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 64, 64, 3, generator=torch.Generator().manual_seed(seed))


def conds(kind: str = tiny_models.SD15) -> tuple[Any, Any]:
    return random_text_cond(kind, seed=1).comfy(), random_text_cond(kind, seed=2).comfy()


def sample(model: Any, positive: Any, negative: Any, steps: int, size: int = LATENT, cfg: float = 5.0) -> Any:
    import comfy.sample

    noise = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative,
                                   torch.zeros_like(noise), seed=0, disable_pbar=True)
