"""DiT adapter state dicts for tests, in the released files' own key layouts, from key -> shape tables.

XLabs' FLUX.1 files are flat (`ip_adapter_proj_model.*`, `double_blocks.{i}.processor.*`); InstantX's SD3.5 file is
the nested `{"image_proj": ..., "ip_adapter": ...}` pickle. Shapes are written out from the published facts
(dit-ip-adapters.md §2, §4), independently of the pack's modules. Random tensors are fan-in scaled (std 1/sqrt(fan_in))
so activations stay O(1) at any width and float32 rounding stays far below the parity tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tests.factories import Shapes, resampler_shapes

#: Published sizes.
FLUX_BLOCKS, FLUX_HIDDEN, T5_WIDTH, VIT_L_EMBEDS = 19, 3072, 4096, 768
SD35_BLOCKS, SD35_HIDDEN, SD35_HEAD_DIM, SIGLIP_WIDTH = 38, 2432, 64, 1152
SD35_RESAMPLER_DIM, SD35_RESAMPLER_HEADS, SD35_TOKENS, SD35_TEMB_IN = 1280, 20, 64, 320


def xlabs_shapes(blocks: int, hidden: int, token_width: int, clip_width: int, tokens: int) -> Shapes:
    """A flat XLabs file: projection Linear(clip -> tokens * width) + LayerNorm, k/v Linear(width -> hidden) + bias."""
    shapes: Shapes = {"ip_adapter_proj_model.proj.weight": (tokens * token_width, clip_width),
                      "ip_adapter_proj_model.proj.bias": (tokens * token_width,),
                      "ip_adapter_proj_model.norm.weight": (token_width,),
                      "ip_adapter_proj_model.norm.bias": (token_width,)}
    for i in range(blocks):
        for kv in ("k", "v"):
            prefix = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            shapes[f"{prefix}.weight"] = (hidden, token_width)
            shapes[f"{prefix}.bias"] = (hidden,)
    return shapes


def time_resampler_shapes(dim: int, heads: int, queries: int, embed: int, out: int, temb_in: int,
                          depth: int = 4) -> Shapes:
    """InstantX's `image_proj` group: the Plus resampler's (layers.{i}.0 attention, .1 feed-forward) plus a time
    embedding and each layer's adaLN (.2)."""
    shapes = resampler_shapes(dim, heads, queries, embed, out, depth)
    shapes.update({"time_embedding.linear_1.weight": (dim, temb_in), "time_embedding.linear_1.bias": (dim,),
                   "time_embedding.linear_2.weight": (dim, dim), "time_embedding.linear_2.bias": (dim,)})
    for i in range(depth):
        shapes.update({f"layers.{i}.2.1.weight": (4 * dim, dim), f"layers.{i}.2.1.bias": (4 * dim,)})
    return shapes


def joint_layer_shapes(blocks: int, hidden: int, head_dim: int, temb_dim: int) -> Shapes:
    """InstantX's `ip_adapter` group: per block adaLN, k/v projections and three head-wide RMS norm weights."""
    shapes: Shapes = {}
    for i in range(blocks):
        shapes.update({f"{i}.norm_ip.linear.weight": (2 * hidden, temb_dim), f"{i}.norm_ip.linear.bias": (2 * hidden,),
                       f"{i}.to_k_ip.weight": (hidden, hidden), f"{i}.to_v_ip.weight": (hidden, hidden),
                       f"{i}.norm_q.weight": (head_dim,), f"{i}.norm_k.weight": (head_dim,),
                       f"{i}.norm_ip_k.weight": (head_dim,)})
    return shapes


def instantx_shapes(blocks: int, hidden: int, head_dim: int, clip_width: int, tokens: int, dim: int, heads: int,
                    temb_in: int, depth: int = 4) -> dict[str, Shapes]:
    return {"image_proj": time_resampler_shapes(dim, heads, tokens, clip_width, hidden, temb_in, depth),
            "ip_adapter": joint_layer_shapes(blocks, hidden, head_dim, dim)}


@dataclass(frozen=True)
class ReleasedDiTAdapter:
    """A released DiT adapter: file name, groups of shapes, and the facts detection must report."""

    filename: str
    shapes: Shapes | dict[str, Shapes]
    kind: str
    family: str
    encoder: str
    num_tokens: int
    num_blocks: int
    total_params: int


RELEASED = [
    ReleasedDiTAdapter("ip_adapter.safetensors", xlabs_shapes(FLUX_BLOCKS, FLUX_HIDDEN, T5_WIDTH, VIT_L_EMBEDS, 4),
                       "xlabs-v1", "FLUX.1", "ViT-L/14", 4, FLUX_BLOCKS, 490_874_880),
    ReleasedDiTAdapter("flux-ip-adapter-v2.safetensors",
                       xlabs_shapes(FLUX_BLOCKS, FLUX_HIDDEN, T5_WIDTH, VIT_L_EMBEDS, 16), "xlabs-v2", "FLUX.1",
                       "ViT-L/14", 16, FLUX_BLOCKS, 528_672_768),
    ReleasedDiTAdapter("ip-adapter.bin", instantx_shapes(SD35_BLOCKS, SD35_HIDDEN, SD35_HEAD_DIM, SIGLIP_WIDTH,
                                                         SD35_TOKENS, SD35_RESAMPLER_DIM, SD35_RESAMPLER_HEADS,
                                                         SD35_TEMB_IN),
                       "instantx", "SD3.5 Large", "SigLIP so400m/14-384", SD35_TOKENS, SD35_BLOCKS, 797_925_888),
]


def _fill(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if len(shape) == 1:
        noise = torch.randn(shape, generator=generator) * 0.1
        return noise + 1.0 if key.endswith("weight") else noise  # norm weights near 1, biases near 0
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    if key == "latents":
        fan_in = shape[-1]
    return torch.randn(shape, generator=generator) / fan_in**0.5


def random_tensors(shapes: Shapes, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random tensors for a shape table (meta tensors with device="meta")."""
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    generator = torch.Generator().manual_seed(seed)
    return {k: _fill(k, s, generator) for k, s in shapes.items()}


def random_groups(shapes: dict[str, Shapes], seed: int = 0, device: str = "cpu") -> dict[str, dict[str, torch.Tensor]]:
    return {group: random_tensors(table, seed + n, device) for n, (group, table) in enumerate(sorted(shapes.items()))}
