"""Shared setup of the pack's host tests: tiny official-format adapters sized for the tiny host UNets, the pack's
nodes run as the executor would run them, and diffusers' IP-Adapter on the UNet twin as the reference."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ip_adapter.layout import LAYOUTS, BaseFamily
from tests.diffusers_reference import attn2_widths, load_diffusers_adapters
from tests.factories import flat, image_proj_shapes, mlp_shapes, random_groups, resampler_shapes
from tests.host.predict import TextCond, random_text_cond
from tests.host.tiny_models import SD15, TinyClipVision, TinyUNet

FAMILY = {SD15: BaseFamily.SD15, "sdxl": BaseFamily.SDXL}
IMAGE_TOKENS = 4
RESAMPLER_DIM, RESAMPLER_HEADS = 64, 1  # diffusers assumes 64-dim heads
LATENT_HW = 8
SIGMA = 2.0
IMAGE_SIDE = 48


def image_proj_for(kind: str, cross: int, clip: TinyClipVision) -> dict:
    """The `image_proj` shapes of a tiny adapter of `kind` fed by the tiny CLIP vision model."""
    hidden, projection = clip.config["hidden_size"], clip.config["projection_dim"]
    table = {
        "base": lambda: image_proj_shapes(cross, projection, IMAGE_TOKENS),
        "plus": lambda: resampler_shapes(RESAMPLER_DIM, RESAMPLER_HEADS, IMAGE_TOKENS, hidden, cross),
        "full-face": lambda: mlp_shapes(cross, hidden),
    }
    return table[kind]()


def adapter_groups(kind: str, unet: TinyUNet, clip: TinyClipVision, seed: int = 0) -> dict[str, dict]:
    """A random official-format adapter for `unet`: to_k_ip/to_v_ip sized like its attn2 layers, in checkpoint order."""
    widths = attn2_widths(unet.diffusers)
    assert len(widths) == LAYOUTS[FAMILY[unet.kind]].num_layers
    cross = unet.context_dim
    return random_groups(image_proj_for(kind, cross, clip), widths, cross, seed=seed)


def write_adapter(host_models: Any, groups: dict, filename: str) -> str:
    return host_models.write("ipadapter", filename, flat(groups))


@dataclass
class PackNodes:
    """The pack's three node classes as the host registered them, plus its core package (for error types)."""

    load: Any
    encode: Any
    apply: Any
    core: Any

    @classmethod
    def of(cls, host_pack: Any) -> PackNodes:
        m = host_pack.node_class_mappings
        return cls(m["LoadIPAdapter"](), m["EncodeImagePrompt"](), m["ApplyIPAdapter"](), host_pack.module.ip_adapter)


def apply(nodes: PackNodes, model: Any, adapter: Any, prompt: Any, weight: float = 1.0, weight_type: str = "linear",
          combine: str = "concat", start_at: float = 0.0, end_at: float = 1.0, scaling: str = "V only",
          attn_mask: torch.Tensor | None = None) -> Any:
    with torch.inference_mode():
        return nodes.apply.apply(model, adapter, prompt, weight, weight_type, combine, start_at, end_at, scaling,
                                 attn_mask)[0]


def reference_images(n: int, seed: int = 0) -> torch.Tensor:
    """IMAGE batch (n, H, W, 3) in 0..1."""
    return torch.rand(n, IMAGE_SIDE, IMAGE_SIDE, 3, generator=torch.Generator().manual_seed(seed))


def twin_clip_inputs(clip: TinyClipVision, images: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' image_embeds for one adapter: positive and reference negative, per image.

    Shapes: (1, n, E) for base, (1, n, T, H) for plus / full face.
    """
    import comfy.clip_vision

    pixels = comfy.clip_vision.clip_preprocess(images, size=clip.config["image_size"]).float()
    with torch.no_grad():
        out = clip.transformers(pixel_values=pixels, output_hidden_states=True)
        zero = clip.transformers(pixel_values=torch.zeros_like(pixels[:1]), output_hidden_states=True)
    if kind == "base":
        pos = out.image_embeds
        return pos[None], torch.zeros_like(pos)[None]
    pos = out.hidden_states[-2]
    return pos[None], zero.hidden_states[-2].expand_as(pos)[None]


def twin_with_adapters(unet: TinyUNet, groups: Sequence[dict], scales: Sequence[float]) -> torch.nn.Module:
    twin = copy.deepcopy(unet.diffusers)
    load_diffusers_adapters(twin, groups, scales)
    return twin


def text_conds(unet: TinyUNet) -> tuple[TextCond, TextCond]:
    return random_text_cond(unet.kind, seed=1), random_text_cond(unet.kind, seed=2)


def latent(seed: int = 3) -> torch.Tensor:
    return torch.randn(1, 4, LATENT_HW, LATENT_HW, generator=torch.Generator().manual_seed(seed))


def stack_conds(a: TextCond, b: TextCond) -> TextCond:
    """Two conds as one batch (a first), as the host batches [uncond, cond]."""
    pooled = None if a.pooled is None else torch.cat([a.pooled, b.pooled])
    return TextCond(torch.cat([a.context, b.context]), pooled, a.width, a.height)


def twin_batch_eps(twin: torch.nn.Module, unet: TinyUNet, x: torch.Tensor, cond: TextCond, uncond: TextCond,
                   embeds: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' (cond, uncond) eps for one latent, both rows in one batch [uncond, cond] like the host."""
    image_embeds = [torch.cat([neg, pos]) for pos, neg in embeds]
    eps = twin_ip_eps(twin, unet, x.repeat(2, 1, 1, 1), stack_conds(uncond, cond), image_embeds)
    return eps[1:], eps[:1]


def twin_ip_eps(twin: torch.nn.Module, unet: TinyUNet, x: torch.Tensor, cond: TextCond,
                image_embeds: list[torch.Tensor]) -> torch.Tensor:
    """diffusers' eps with IP-Adapter image embeds (one tensor per adapter), host input scaling."""
    sampling = unet.patcher.model.model_sampling
    sigma = torch.full((x.shape[0],), SIGMA)
    added = dict(cond.added_cond_kwargs() or {}, image_embeds=image_embeds)
    with torch.no_grad():
        out = twin(x / (sigma.view(-1, 1, 1, 1) ** 2 + 1.0) ** 0.5, sampling.timestep(sigma).float(),
                   encoder_hidden_states=cond.context, added_cond_kwargs=added)
    return out.sample
