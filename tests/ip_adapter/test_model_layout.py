"""Custom layouts read from a UNet's blocks: the standard tables come out again, and pruned UNets get diffusers'
own processor order (checked against real diffusers models)."""

from __future__ import annotations

import pytest
from diffusers import UNet2DConditionModel

from ip_adapter import InvalidOptionError, IPAdapter
from ip_adapter.checkpoint import CheckpointGroups
from ip_adapter.layout import SD15_LAYOUT, SD15_TRANSFORMERS, SDXL_LAYOUT, SDXL_TRANSFORMERS, BaseFamily
from ip_adapter.model_layout import BlockTransformer, diffusers_prefixes, layout_from_blocks
from ip_adapter.weight_types import WEIGHT_TYPES, layer_schedule
from tests.factories import image_proj_shapes, random_groups

SD15_RES_BLOCKS, SDXL_RES_BLOCKS = (2, 2, 2, 2), (2, 2, 2)
ATTN2 = "attn2.processor"


def _blocks(transformers) -> list[BlockTransformer]:
    return [BlockTransformer(t.block, t.number, t.depth, t.width) for t in transformers]


@pytest.mark.parametrize(("standard", "transformers", "res_blocks"),
                         [(SD15_LAYOUT, SD15_TRANSFORMERS, SD15_RES_BLOCKS),
                          (SDXL_LAYOUT, SDXL_TRANSFORMERS, SDXL_RES_BLOCKS)], ids=["sd15", "sdxl"])
def test_standard_unets_give_the_standard_tables(standard, transformers, res_blocks) -> None:
    layout = layout_from_blocks(standard.family, standard.cross_attention_dim, _blocks(transformers), res_blocks)
    assert layout.layers == standard.layers
    assert layout.custom and not standard.custom


def _pruned_unet(config: dict) -> UNet2DConditionModel:
    return UNet2DConditionModel(sample_size=8, cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2,
                                **config)


#: (diffusers config, ComfyUI blocks in execution order) of two pruned UNets: BK-SDM-like (one res block per level,
#: no middle transformer) and one with uneven depths (3 res blocks, depths 1/3).
PRUNED = {
    "one-res-block-no-mid": (
        dict(block_out_channels=(8, 16, 16), layers_per_block=1, mid_block_type=None,
             down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        (1, 1, 1),
        [("input", 1, 1, 8), ("input", 3, 1, 16), ("output", 2, 1, 16), ("output", 3, 1, 16), ("output", 4, 1, 8),
         ("output", 5, 1, 8)],
    ),
    "three-res-blocks-deep": (
        dict(block_out_channels=(8, 16), layers_per_block=3, transformer_layers_per_block=(1, 3),
             down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
             up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        (3, 3),
        [("input", 1, 1, 8), ("input", 2, 1, 8), ("input", 3, 1, 8), ("input", 5, 3, 16), ("input", 6, 3, 16),
         ("input", 7, 3, 16), ("middle", 0, 3, 16)]
        + [("output", i, 3, 16) for i in range(4)] + [("output", i, 1, 8) for i in range(4, 8)],
    ),
}


@pytest.mark.parametrize("name", PRUNED)
def test_pruned_unet_layers_follow_diffusers_processor_order(name: str) -> None:
    config, res_blocks, blocks = PRUNED[name]
    unet = _pruned_unet(config)
    expected = [n for n in unet.attn_processors if n.endswith(ATTN2)]
    layout = layout_from_blocks(BaseFamily.SD15, 8, [BlockTransformer(*b) for b in blocks], res_blocks)
    assert [layer.diffusers_name for layer in layout.layers] == expected
    assert [layer.checkpoint_index for layer in layout.layers] == list(range(1, 2 * len(expected), 2))
    widths = [unet.get_submodule(n.removesuffix(".processor")).inner_dim for n in expected]
    assert [layer.width for layer in layout.layers] == widths


def test_transformer_index_counts_in_execution_order() -> None:
    _, res_blocks, blocks = PRUNED["three-res-blocks-deep"]
    layout = layout_from_blocks(BaseFamily.SD15, 8, [BlockTransformer(*b) for b in blocks], res_blocks)
    middle = [layer for layer in layout.layers if layer.block == "middle"]
    assert {layer.transformer_index for layer in middle} == {6}  # after the six input transformers
    assert [layer.patch_key for layer in middle] == [("middle", 0, j) for j in range(3)]


def test_a_block_the_unet_cannot_have_is_refused() -> None:
    assert ("input", 3) not in diffusers_prefixes((2, 2))  # block 3 is the first level's downsampler
    with pytest.raises(KeyError):
        layout_from_blocks(BaseFamily.SD15, 8, [BlockTransformer("input", 3, 1, 8)], (2, 2))


def test_layer_selective_weight_types_refuse_custom_layouts() -> None:
    _, res_blocks, blocks = PRUNED["one-res-block-no-mid"]
    layout = layout_from_blocks(BaseFamily.SD15, 8, [BlockTransformer(*b) for b in blocks], res_blocks)
    assert set(layer_schedule("linear", layout)) == set(range(layout.num_transformers))
    assert set(layer_schedule("weak middle", layout)) == set(range(layout.num_transformers))
    with pytest.raises(InvalidOptionError, match="custom layout .6 layers.*linear"):
        layer_schedule("style transfer", layout)
    assert "style transfer" in WEIGHT_TYPES


@pytest.mark.parametrize(("cross", "family"), [(768, BaseFamily.SD15), (2048, BaseFamily.SDXL),
                                               (1024, BaseFamily.SD15)])
def test_custom_layer_count_takes_its_family_from_the_context_width(cross: int, family: BaseFamily) -> None:
    groups = random_groups(image_proj_shapes(cross, 16, 4), [32] * 10, cross)
    spec = IPAdapter.from_groups(CheckpointGroups("pruned.safetensors", **groups), device="meta").spec
    assert (spec.family, spec.num_layers, spec.custom_layout) == (family, 10, True)

