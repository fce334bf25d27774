"""Shared setup of the DiT host tests: tiny adapters written in the released files' layouts, the pack's nodes run as
the executor runs them, host predictions as velocities, and the twins' encoder features for diffusers.

Import the fixtures into a test module (`from tests.host.dit_setup import *  # noqa: F403`); builds are cached per
process, so every module shares them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.dit_factories import instantx_shapes, random_groups, random_tensors, xlabs_shapes
from tests.host.ipa_setup import PackNodes
from tests.host.predict import host_denoised
from tests.host.tiny_dit import (
    POOLED_WIDTH,
    SD3_TEXT_WIDTH,
    SIGLIP_MEAN_STD,
    T5_WIDTH,
    TinyDiT,
    TinySiglip,
    build_tiny_flux,
    build_tiny_mmdit,
    build_tiny_siglip,
    cached,
    release_cached,
)

SIGMA = 0.7
WEIGHT = 0.8
TEXT_TOKENS = 5
LATENT_SIDE = 8
IMAGE_SIDE = 48
#: Tiny adapter sizes: XLabs reads 4096-wide tokens (diffusers needs that for v2); InstantX 8 tokens, resampler 2x64.
XLABS_TOKENS = {"v1": 4, "v2": 16}
INSTANTX_TOKENS, INSTANTX_DIM, INSTANTX_HEADS, INSTANTX_TEMB = 8, 128, 2, 32
FILES = {"v1": "ip_adapter.safetensors", "v2": "flux-ip-adapter-v2.safetensors", "v1b": "ip_adapter_b.safetensors",
         "sd35": "ip-adapter.bin"}


@dataclass
class DiTFiles:
    """Adapter file names in the host's ipadapter folder, and that folder (for diffusers' loaders)."""

    folder: Path
    names: dict[str, str]


def _write_adapters(host_models: Any, flux: TinyDiT, mmdit: TinyDiT, clip_width: int, siglip_width: int) -> DiTFiles:
    folder = host_models.folder("ipadapter")
    for key, seed, tokens in (("v1", 5, 4), ("v2", 6, 16), ("v1b", 7, 4)):
        shapes = xlabs_shapes(flux.depth, flux.hidden, T5_WIDTH, clip_width, tokens)
        save_file(random_tensors(shapes, seed), str(folder / FILES[key]))
    shapes = instantx_shapes(mmdit.depth, mmdit.hidden, 64, siglip_width, INSTANTX_TOKENS, INSTANTX_DIM,
                             INSTANTX_HEADS, INSTANTX_TEMB)
    torch.save(random_groups(shapes, seed=8), folder / FILES["sd35"])
    import folder_paths

    folder_paths.filename_list_cache.clear()
    return DiTFiles(folder, dict(FILES))


@pytest.fixture(scope="session")
def dit_builds(comfy_host) -> Iterator[None]:
    """The cached tiny DiT builds, released at the end of the session while the host is still intact."""
    yield
    import gc

    release_cached()
    gc.collect()


@pytest.fixture(scope="module")
def flux(dit_builds) -> TinyDiT:
    return cached("tiny_flux", build_tiny_flux)


@pytest.fixture(scope="module")
def mmdit(dit_builds) -> TinyDiT:
    return cached("tiny_mmdit", build_tiny_mmdit)


@pytest.fixture(scope="module")
def siglip(comfy_host, dit_builds) -> TinySiglip:
    return cached("tiny_siglip", lambda: build_tiny_siglip(comfy_host.scratch / "configs"))


@pytest.fixture(scope="module")
def dit_files(host_models, flux, mmdit, tiny_clip_vision, siglip) -> DiTFiles:
    width = tiny_clip_vision.config["projection_dim"]
    return cached("dit_files", lambda: _write_adapters(host_models, flux, mmdit, width,
                                                       siglip.transformers.config.hidden_size))


@pytest.fixture(scope="module")
def nodes(host_pack) -> PackNodes:
    return PackNodes.of(host_pack)


def load(nodes: PackNodes, files: DiTFiles, key: str) -> Any:
    return nodes.load.load(files.names[key])[0]


def reference_image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, IMAGE_SIDE, IMAGE_SIDE, 3, generator=torch.Generator().manual_seed(seed))


def encode(nodes: PackNodes, clip_vision: Any, image: torch.Tensor, crop: str = "center",
           negative: torch.Tensor | None = None) -> Any:
    with torch.inference_mode():
        return nodes.encode.encode(clip_vision, image, crop, negative)[0]


def apply(nodes: PackNodes, model: Any, adapter: Any, prompt: Any, weight: float = WEIGHT, weight_type: str = "linear",
          start_at: float = 0.0, end_at: float = 1.0, scaling: str = "V only",
          attn_mask: torch.Tensor | None = None) -> Any:
    with torch.inference_mode():
        return nodes.apply.apply(model, adapter, prompt, weight, weight_type, "concat", start_at, end_at, scaling,
                                 attn_mask)[0]


def _seeded(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def latent(seed: int = 1) -> torch.Tensor:
    return _seeded(1, 16, LATENT_SIDE, LATENT_SIDE, seed=seed)


@dataclass(frozen=True)
class Conds:
    """Text conditioning for both frameworks: token embeddings (1, T, width) and the pooled vector (1, 16)."""

    context: torch.Tensor
    pooled: torch.Tensor

    def comfy(self, **extra: Any) -> list:
        return [[self.context, {"pooled_output": self.pooled, **extra}]]


def conds(kind: str, seed: int) -> Conds:
    width = T5_WIDTH if kind == "flux" else SD3_TEXT_WIDTH
    return Conds(_seeded(1, TEXT_TOKENS, width, seed=seed), _seeded(1, POOLED_WIDTH, seed=seed + 100))


def velocity(model: Any, x: torch.Tensor, sigma: float, cond: Conds, uncond: Conds | None = None,
             **extra: Any) -> list[torch.Tensor]:
    """The host's predictions [cond] or [cond, uncond] as velocities, (x - denoised) / sigma (flow models)."""
    denoised = host_denoised(model, x, sigma, cond.comfy(**extra), None if uncond is None else uncond.comfy(**extra))
    return [(x - d) / sigma for d in denoised]


def clip_features(clip: Any, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny CLIP twin's image_embeds for the image and for a black image (XLabs' reference negative). (1, E)."""
    import comfy.clip_vision

    size = clip.config["image_size"]
    with torch.no_grad():
        pos = clip.transformers(pixel_values=comfy.clip_vision.clip_preprocess(image, size=size).float())
        black = comfy.clip_vision.clip_preprocess(torch.zeros(1, size, size, 3), size=size, crop=False).float()
        neg = clip.transformers(pixel_values=black)
    return pos.image_embeds, neg.image_embeds


def siglip_features(siglip: TinySiglip, image: torch.Tensor) -> torch.Tensor:
    """The SigLIP twin's hidden_states[-2] of the squashed image (SiglipImageProcessor resizes without cropping)."""
    import comfy.clip_vision

    size = siglip.transformers.config.image_size
    pixels = comfy.clip_vision.clip_preprocess(image, size=size, mean=SIGLIP_MEAN_STD, std=SIGLIP_MEAN_STD,
                                               crop=False).float()
    with torch.no_grad():
        return siglip.transformers(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


__all__ = ["dit_builds", "dit_files", "flux", "mmdit", "nodes", "siglip"]
