"""The cross-attention layout of one particular UNet, read from its blocks (for adapters with a custom layer count).

A pruned or distilled UNet (fewer res blocks per level, no middle transformer, other transformer depths) has its own
list of cross-attention layers. The adapter trained for it numbers them in diffusers' processor order (down blocks,
up blocks, then the mid block; `2n+1` for the n-th layer), while ComfyUI addresses them by attn2 patch key. Both
orders follow from the UNet's blocks: ComfyUI's input block ids map to diffusers' `down_blocks.<level>.attentions.<j>`
given the res blocks per level, output ids to `up_blocks`, and the middle block to `mid_block`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .layout import BaseFamily, SpatialTransformerSpec, UNetLayout, build_layout

MIDDLE_PREFIX = "mid_block.attentions.0"


@dataclass(frozen=True)
class BlockTransformer:
    """One SpatialTransformer found in a ComfyUI UNet.

    Attributes:
        block: "input", "middle" or "output".
        number: ComfyUI's block id (the middle block is 0).
        depth: transformer blocks inside it.
        width: inner width of its attention (rows of to_k).
    """

    block: str
    number: int
    depth: int
    width: int


def diffusers_prefixes(num_res_blocks: Sequence[int]) -> dict[tuple[str, int], str]:
    """ComfyUI block (kind, id) -> the diffusers module path of its attention, for a UNet with `num_res_blocks`
    res blocks per level.

    Input block 0 is the stem convolution; each level then has one block per res block and, except the deepest,
    a downsampling block. Output blocks run from the deepest level up, one more block per level than the input side.
    """
    prefixes: dict[tuple[str, int], str] = {("middle", 0): MIDDLE_PREFIX}
    levels = len(num_res_blocks)
    block_id = 1
    for level, count in enumerate(num_res_blocks):
        for j in range(count):
            prefixes[("input", block_id)] = f"down_blocks.{level}.attentions.{j}"
            block_id += 1
        block_id += int(level < levels - 1)
    block_id = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(num_res_blocks[level] + 1):
            prefixes[("output", block_id)] = f"up_blocks.{up}.attentions.{j}"
            block_id += 1
    return prefixes


def layout_from_blocks(
    family: BaseFamily, cross_attention_dim: int, found: Sequence[BlockTransformer], num_res_blocks: Sequence[int]
) -> UNetLayout:
    """The custom layout of a UNet whose SpatialTransformers are `found`, listed in ComfyUI execution order
    (input blocks, middle, output blocks).

    Raises:
        KeyError: a transformer sits in a block that a UNet with `num_res_blocks` does not have.
    """
    prefixes = diffusers_prefixes(num_res_blocks)
    transformers = tuple(
        SpatialTransformerSpec(t.block, t.number, t.depth, t.width, prefixes[(t.block, t.number)]) for t in found
    )
    return build_layout(family, cross_attention_dim, transformers, custom=True)
