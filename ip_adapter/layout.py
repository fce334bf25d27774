"""UNet cross-attention layout: which checkpoint index patches which layer, for SD1.5 and SDXL.

The `ip_adapter` group of a checkpoint is indexed by position in diffusers' `unet.attn_processors`, where self- and
cross-attention are both counted (down blocks, then up blocks, then the mid block), so the n-th cross-attention layer
carries index 2n+1. ComfyUI addresses the same layer by its attn2 patch key `(block, number, block_index)` and counts
SpatialTransformers in execution order (input, middle, output) as `transformer_index`. Both orders are derived here
from one table of SpatialTransformers per base family.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

#: diffusers registers `down_blocks` and `up_blocks` before `mid_block`, which fixes the checkpoint order.
_DIFFUSERS_GROUP_ORDER = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}
SD15_HEADS = 8
SDXL_HEAD_DIM = 64


class BaseFamily(str, Enum):
    """The diffusion model family an adapter (or a UNet) belongs to."""

    SD15 = "SD1.5"
    SDXL = "SDXL"
    FLUX = "FLUX.1"  # DiT families: no UNet layout; see ip_adapter/dit/layout.py
    SD35_LARGE = "SD3.5 Large"


@dataclass(frozen=True)
class SpatialTransformerSpec:
    """One SpatialTransformer of the real UNet, in ComfyUI execution order."""

    block: str  # "input" | "middle" | "output"
    number: int  # ComfyUI block id; the middle block is always 0
    depth: int  # transformer blocks inside it
    width: int  # inner dim of its attention (320 / 640 / 1280 in the full-size models)
    diffusers_prefix: str  # e.g. "down_blocks.0.attentions.0"


@dataclass(frozen=True)
class AttnLayer:
    """One cross-attention (attn2) layer of the UNet and every name it goes by."""

    checkpoint_index: int  # index n in "<n>.to_k_ip.weight" (odd)
    patch_key: tuple[str, int, int]  # ComfyUI attn2 replace key (block, number, block_index)
    transformer_index: int  # ComfyUI's global SpatialTransformer counter
    width: int  # full-size inner dim: rows of to_k_ip / to_v_ip
    heads: int  # full-size attention heads
    diffusers_name: str  # key of `unet.attn_processors`

    @property
    def block(self) -> str:
        """The ComfyUI block kind: "input", "middle" or "output"."""
        return self.patch_key[0]


@dataclass(frozen=True)
class UNetLayout:
    """All cross-attention layers of one base family (or, `custom`, of one particular model read from its blocks)."""

    family: BaseFamily
    cross_attention_dim: int
    transformers: tuple[SpatialTransformerSpec, ...]
    layers: tuple[AttnLayer, ...]  # sorted by checkpoint index
    custom: bool = False  # not a standard SD1.5 / SDXL table: layer-selective weight types do not apply

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_transformers(self) -> int:
        return len(self.transformers)

    def layer_at(self, checkpoint_index: int) -> AttnLayer:
        """The layer a checkpoint index belongs to."""
        return self.layers[(checkpoint_index - 1) // 2]


def _heads(family: BaseFamily, width: int) -> int:
    return SD15_HEADS if family is BaseFamily.SD15 else width // SDXL_HEAD_DIM


def _diffusers_sort_key(spec: SpatialTransformerSpec) -> tuple[int, tuple[int, ...]]:
    group, *rest = spec.diffusers_prefix.split(".")
    # Numeric, so that "down_blocks.10" sorts after "down_blocks.2" in deep custom UNets.
    return _DIFFUSERS_GROUP_ORDER[group], tuple(int(part) for part in rest if part.isdigit())


def build_layout(
    family: BaseFamily, cross_attention_dim: int, transformers: tuple[SpatialTransformerSpec, ...],
    custom: bool = False,
) -> UNetLayout:
    """Number every transformer block of `transformers` the way diffusers' processor order does."""
    t_index = {spec: i for i, spec in enumerate(transformers)}
    layers = []
    for spec in sorted(transformers, key=_diffusers_sort_key):
        for j in range(spec.depth):
            layers.append(
                AttnLayer(
                    checkpoint_index=2 * len(layers) + 1,
                    patch_key=(spec.block, spec.number, j),
                    transformer_index=t_index[spec],
                    width=spec.width,
                    heads=_heads(family, spec.width),
                    diffusers_name=f"{spec.diffusers_prefix}.transformer_blocks.{j}.attn2.processor",
                )
            )
    return UNetLayout(family, cross_attention_dim, transformers, tuple(layers), custom)


def _st(block: str, number: int, depth: int, width: int, prefix: str) -> SpatialTransformerSpec:
    return SpatialTransformerSpec(block, number, depth, width, prefix)


SD15_TRANSFORMERS = (
    _st("input", 1, 1, 320, "down_blocks.0.attentions.0"),
    _st("input", 2, 1, 320, "down_blocks.0.attentions.1"),
    _st("input", 4, 1, 640, "down_blocks.1.attentions.0"),
    _st("input", 5, 1, 640, "down_blocks.1.attentions.1"),
    _st("input", 7, 1, 1280, "down_blocks.2.attentions.0"),
    _st("input", 8, 1, 1280, "down_blocks.2.attentions.1"),
    _st("middle", 0, 1, 1280, "mid_block.attentions.0"),
    _st("output", 3, 1, 1280, "up_blocks.1.attentions.0"),
    _st("output", 4, 1, 1280, "up_blocks.1.attentions.1"),
    _st("output", 5, 1, 1280, "up_blocks.1.attentions.2"),
    _st("output", 6, 1, 640, "up_blocks.2.attentions.0"),
    _st("output", 7, 1, 640, "up_blocks.2.attentions.1"),
    _st("output", 8, 1, 640, "up_blocks.2.attentions.2"),
    _st("output", 9, 1, 320, "up_blocks.3.attentions.0"),
    _st("output", 10, 1, 320, "up_blocks.3.attentions.1"),
    _st("output", 11, 1, 320, "up_blocks.3.attentions.2"),
)

SDXL_TRANSFORMERS = (
    _st("input", 4, 2, 640, "down_blocks.1.attentions.0"),
    _st("input", 5, 2, 640, "down_blocks.1.attentions.1"),
    _st("input", 7, 10, 1280, "down_blocks.2.attentions.0"),
    _st("input", 8, 10, 1280, "down_blocks.2.attentions.1"),
    _st("middle", 0, 10, 1280, "mid_block.attentions.0"),
    _st("output", 0, 10, 1280, "up_blocks.0.attentions.0"),
    _st("output", 1, 10, 1280, "up_blocks.0.attentions.1"),
    _st("output", 2, 10, 1280, "up_blocks.0.attentions.2"),
    _st("output", 3, 2, 640, "up_blocks.1.attentions.0"),
    _st("output", 4, 2, 640, "up_blocks.1.attentions.1"),
    _st("output", 5, 2, 640, "up_blocks.1.attentions.2"),
)

SD15_LAYOUT = build_layout(BaseFamily.SD15, 768, SD15_TRANSFORMERS)
SDXL_LAYOUT = build_layout(BaseFamily.SDXL, 2048, SDXL_TRANSFORMERS)

LAYOUTS = {BaseFamily.SD15: SD15_LAYOUT, BaseFamily.SDXL: SDXL_LAYOUT}
LAYOUT_BY_LAYER_COUNT = {layout.num_layers: layout for layout in LAYOUTS.values()}
