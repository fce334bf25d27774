"""Official-format IP-Adapter state dicts for tests, from key -> shape tables (checkpoints.md §4-6).

Shapes are written out here independently of the pack's modules, so detection and loading are checked against the
documented layouts rather than against themselves. `materialize` gives meta tensors (full-size checks) or small
random tensors (numerical tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ip_adapter.layout import SD15_LAYOUT, SDXL_LAYOUT, UNetLayout

Shapes = dict[str, tuple[int, ...]]
LORA_RANK = 128


def image_proj_shapes(cross: int, embed: int, tokens: int) -> Shapes:
    return {"proj.weight": (tokens * cross, embed), "proj.bias": (tokens * cross,), "norm.weight": (cross,),
            "norm.bias": (cross,)}


def mlp_shapes(cross: int, embed: int) -> Shapes:
    return {"proj.0.weight": (embed, embed), "proj.0.bias": (embed,), "proj.2.weight": (cross, embed),
            "proj.2.bias": (cross,), "proj.3.weight": (cross,), "proj.3.bias": (cross,)}


def faceid_shapes(cross: int, tokens: int, id_dim: int = 512) -> Shapes:
    return {"proj.0.weight": (2 * id_dim, id_dim), "proj.0.bias": (2 * id_dim,),
            "proj.2.weight": (tokens * cross, 2 * id_dim), "proj.2.bias": (tokens * cross,),
            "norm.weight": (cross,), "norm.bias": (cross,)}


def resampler_shapes(dim: int, heads: int, queries: int, embed: int, out: int, depth: int = 4,
                     head_dim: int = 64, latents: bool = True) -> Shapes:
    inner = heads * head_dim
    shapes: Shapes = {"latents": (1, queries, dim)} if latents else {}
    shapes.update({"proj_in.weight": (dim, embed), "proj_in.bias": (dim,), "proj_out.weight": (out, dim),
                   "proj_out.bias": (out,), "norm_out.weight": (out,), "norm_out.bias": (out,)})
    for i in range(depth):
        p = f"layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            shapes[f"{p}{norm}.weight"] = (dim,)
            shapes[f"{p}{norm}.bias"] = (dim,)
        shapes.update({f"{p}0.to_q.weight": (inner, dim), f"{p}0.to_kv.weight": (2 * inner, dim),
                       f"{p}0.to_out.weight": (dim, inner), f"{p}1.1.weight": (4 * dim, dim),
                       f"{p}1.3.weight": (dim, 4 * dim)})
    return shapes


def faceid_plus_shapes(cross: int, clip: int, tokens: int = 4, id_dim: int = 512) -> Shapes:
    shapes = faceid_shapes(cross, tokens, id_dim)
    perceiver = resampler_shapes(cross, cross // 64, 0, clip, cross, latents=False)
    shapes.update({f"perceiver_resampler.{k}": v for k, v in perceiver.items()})
    return shapes


def layer_shapes(widths: Sequence[int], cross: int) -> Shapes:
    shapes: Shapes = {}
    for n, width in enumerate(widths):
        shapes[f"{2 * n + 1}.to_k_ip.weight"] = (width, cross)
        shapes[f"{2 * n + 1}.to_v_ip.weight"] = (width, cross)
    return shapes


def lora_shapes(widths: Sequence[int], cross: int, rank: int = LORA_RANK) -> Shapes:
    """FaceID LoRA at every processor index (attn1 even, attn2 odd)."""
    shapes: Shapes = {}
    for i in range(2 * len(widths)):
        hidden = widths[i // 2]
        context = cross if i % 2 else hidden
        for name, fan_in in (("to_q_lora", hidden), ("to_k_lora", context), ("to_v_lora", context),
                             ("to_out_lora", hidden)):
            shapes[f"{i}.{name}.down.weight"] = (rank, fan_in)
            shapes[f"{i}.{name}.up.weight"] = (hidden, rank)
    return shapes


@dataclass(frozen=True)
class OfficialCheckpoint:
    """A released checkpoint: file stem, layout, image_proj shapes and published facts."""

    stem: str
    layout: UNetLayout
    image_proj: Shapes
    kind: str
    encoder: str
    num_tokens: int
    total_params: int
    lora: bool = False

    def shapes(self) -> dict[str, Shapes]:
        widths = [layer.width for layer in self.layout.layers]
        ad = layer_shapes(widths, self.layout.cross_attention_dim)
        if self.lora:
            ad.update(lora_shapes(widths, self.layout.cross_attention_dim))
        return {"image_proj": self.image_proj, "ip_adapter": ad}


SD15, SDXL = SD15_LAYOUT, SDXL_LAYOUT
_PLUS15 = resampler_shapes(768, 12, 16, 1280, 768)
_PLUSXL = resampler_shapes(1280, 20, 16, 1280, 2048)
OFFICIAL = [
    OfficialCheckpoint("ip-adapter_sd15", SD15, image_proj_shapes(768, 1024, 4), "base", "ViT-H/14", 4, 22_319_616),
    OfficialCheckpoint("ip-adapter_sd15_light_v11", SD15, image_proj_shapes(768, 1024, 4), "light", "ViT-H/14", 4,
                       22_319_616),
    OfficialCheckpoint("ip-adapter_sd15_vit-G", SD15, image_proj_shapes(768, 1280, 4), "vit-g", "ViT-bigG/14", 4,
                       23_106_048),
    OfficialCheckpoint("ip-adapter-plus_sd15", SD15, _PLUS15, "plus", "ViT-H/14", 16, 49_087_488),
    OfficialCheckpoint("ip-adapter-plus-face_sd15", SD15, _PLUS15, "plus-face", "ViT-H/14", 16, 49_087_488),
    OfficialCheckpoint("ip-adapter-full-face_sd15", SD15, mlp_shapes(768, 1280), "full-face", "ViT-H/14", 257,
                       21_794_304),
    OfficialCheckpoint("ip-adapter_sdxl", SDXL, image_proj_shapes(2048, 1280, 4), "base", "ViT-bigG/14", 4,
                       351_285_248),
    OfficialCheckpoint("ip-adapter_sdxl_vit-h", SDXL, image_proj_shapes(2048, 1024, 4), "base", "ViT-H/14", 4,
                       349_188_096),
    OfficialCheckpoint("ip-adapter-plus_sdxl_vit-h", SDXL, _PLUSXL, "plus", "ViT-H/14", 16, 423_748_864),
    OfficialCheckpoint("ip-adapter-plus-face_sdxl_vit-h", SDXL, _PLUSXL, "plus-face", "ViT-H/14", 16, 423_748_864),
    OfficialCheckpoint("ip-adapter-faceid_sd15", SD15, faceid_shapes(768, 4), "faceid", "none", 4, 48_354_816,
                       lora=True),
    OfficialCheckpoint("ip-adapter-faceid_sdxl", SDXL, faceid_shapes(2048, 4), "faceid", "none", 4, 535_507_968,
                       lora=True),
    OfficialCheckpoint("ip-adapter-faceid-plus_sd15", SD15, faceid_plus_shapes(768, 1280), "faceid-plus",
                       "ViT-H/14", 4, 78_260_736, lora=True),
    OfficialCheckpoint("ip-adapter-faceid-plusv2_sd15", SD15, faceid_plus_shapes(768, 1280), "faceid-plusv2",
                       "ViT-H/14", 4, 78_260_736, lora=True),
    OfficialCheckpoint("ip-adapter-faceid-plusv2_sdxl", SDXL, faceid_plus_shapes(2048, 1280), "faceid-plusv2",
                       "ViT-H/14", 4, 743_707_648, lora=True),
    OfficialCheckpoint("ip-adapter-faceid-portrait-v11_sd15", SD15, faceid_shapes(768, 16), "faceid-portrait",
                       "none", 16, 32_291_328),
    OfficialCheckpoint("ip-adapter-faceid-portrait_sdxl", SDXL, faceid_shapes(2048, 16), "faceid-portrait", "none",
                       16, 374_903_808),
    OfficialCheckpoint("ip-adapter-faceid-portrait_sdxl_unnorm", SDXL, resampler_shapes(1280, 20, 16, 512, 2048),
                       "faceid-portrait-unnorm", "none", 16, 422_765_824),
]


#: Std of 1-D tensors (biases; LayerNorm weights get 1 + this noise).
VECTOR_STD = 0.1


def _is_norm_weight(key: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 1 and key.endswith("weight") and ("norm" in key or key.split(".")[-2] in ("3", "0"))


def materialize(shapes: Shapes, device: str = "meta", dtype: torch.dtype = torch.float32,
                generator: torch.Generator | None = None, scale: float | None = None) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes: meta (no memory), or random normal.

    Matrices (and the Resampler's latents) are fan-in scaled, std 1/sqrt(last dim), as trained weights roughly are:
    activations keep unit scale through every layer, attention logits stay moderate and softmaxes far from one-hot,
    so float32 rounding (which differs between CPUs' BLAS kernels) stays far below the tests' tolerances. Vectors
    get std VECTOR_STD (LayerNorm weights around 1). `scale` replaces every std when given.
    """
    if device == "meta":
        return {k: torch.empty(s, device="meta", dtype=dtype) for k, s in shapes.items()}
    out = {}
    for key, shape in shapes.items():
        std = scale if scale is not None else (VECTOR_STD if len(shape) == 1 else shape[-1] ** -0.5)
        t = torch.randn(shape, generator=generator, dtype=torch.float32) * std
        out[key] = (t + 1.0 if _is_norm_weight(key, shape) else t).to(dtype)
    return out


def flat(groups: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Nested {group: {key: t}} -> flat {"group.key": t} (the .safetensors layout)."""
    return {f"{g}.{k}": t for g, sd in groups.items() for k, t in sd.items()}


def random_groups(image_proj: Shapes, widths: Sequence[int], cross: int, seed: int = 0,
                  extra: Callable[[], Shapes] | None = None,
                  layer_scale: float | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """A small random adapter: `image_proj` from the given shapes, one to_k_ip/to_v_ip per width, fan-in scaled
    (`materialize`); `layer_scale` overrides the std of to_k_ip/to_v_ip."""
    g = torch.Generator().manual_seed(seed)
    ad_shapes = layer_shapes(widths, cross)
    if extra is not None:
        ad_shapes.update(extra())
    ip_scale = {} if layer_scale is None else {"scale": layer_scale}
    return {"image_proj": materialize(image_proj, "cpu", generator=g),
            "ip_adapter": materialize(ad_shapes, "cpu", generator=g, **ip_scale)}
