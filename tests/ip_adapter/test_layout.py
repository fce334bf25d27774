"""UNet cross-attention layout: the checkpoint-index <-> ComfyUI patch-key tables of checkpoints.md §2.1 / §2.2,
typed out here as literal data and compared with `ip_adapter.layout`, plus a cross-check against diffusers'
real processor order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ip_adapter.layout import LAYOUTS, SD15_LAYOUT, SDXL_LAYOUT, AttnLayer, BaseFamily, UNetLayout

SD15_CROSS_DIM, SDXL_CROSS_DIM = 768, 2048
SD15_LAYER_COUNT, SDXL_LAYER_COUNT = 16, 70
SD15_LAST_KEY, SDXL_LAST_KEY = 31, 139
SD15_WIDTH_SUM, SDXL_WIDTH_SUM = 12_480, 83_200
#: Parameters of the `ip_adapter` group (to_k_ip + to_v_ip), checkpoints.md §2.1 / §2.2.
SD15_IP_PARAMS, SDXL_IP_PARAMS = 19_169_280, 340_787_200
SDXL_HEAD_DIM = 64
PROCESSOR_SUFFIX = ".attn2.processor"

# checkpoints.md §2.1, row by row: key, diffusers module, hidden, heads, dim_head, ComfyUI patch key,
# transformer_index.
SD15_TABLE = (
    (1, "down_blocks.0.attentions.0", 320, 8, 40, ("input", 1, 0), 0),
    (3, "down_blocks.0.attentions.1", 320, 8, 40, ("input", 2, 0), 1),
    (5, "down_blocks.1.attentions.0", 640, 8, 80, ("input", 4, 0), 2),
    (7, "down_blocks.1.attentions.1", 640, 8, 80, ("input", 5, 0), 3),
    (9, "down_blocks.2.attentions.0", 1280, 8, 160, ("input", 7, 0), 4),
    (11, "down_blocks.2.attentions.1", 1280, 8, 160, ("input", 8, 0), 5),
    (13, "up_blocks.1.attentions.0", 1280, 8, 160, ("output", 3, 0), 7),
    (15, "up_blocks.1.attentions.1", 1280, 8, 160, ("output", 4, 0), 8),
    (17, "up_blocks.1.attentions.2", 1280, 8, 160, ("output", 5, 0), 9),
    (19, "up_blocks.2.attentions.0", 640, 8, 80, ("output", 6, 0), 10),
    (21, "up_blocks.2.attentions.1", 640, 8, 80, ("output", 7, 0), 11),
    (23, "up_blocks.2.attentions.2", 640, 8, 80, ("output", 8, 0), 12),
    (25, "up_blocks.3.attentions.0", 320, 8, 40, ("output", 9, 0), 13),
    (27, "up_blocks.3.attentions.1", 320, 8, 40, ("output", 10, 0), 14),
    (29, "up_blocks.3.attentions.2", 320, 8, 40, ("output", 11, 0), 15),
    (31, "mid_block.attentions.0", 1280, 8, 160, ("middle", 0, 0), 6),
)


@dataclass(frozen=True)
class SummaryRow:
    """One row of the SDXL summary table (checkpoints.md §2.2)."""

    first_key: int
    last_key: int
    diffusers_block: str  # e.g. "down_blocks.1"; its attentions are numbered 0.. in order
    depth: int  # transformer blocks per attention
    width: int
    heads: int
    count: int  # layers in the row
    comfy_block: str
    comfy_numbers: tuple[int, ...]  # one per attention, in order
    transformer_indices: tuple[int, ...]  # one per attention, in order


SDXL_SUMMARY = (
    SummaryRow(1, 7, "down_blocks.1", 2, 640, 10, 4, "input", (4, 5), (0, 1)),
    SummaryRow(9, 47, "down_blocks.2", 10, 1280, 20, 20, "input", (7, 8), (2, 3)),
    SummaryRow(49, 107, "up_blocks.0", 10, 1280, 20, 30, "output", (0, 1, 2), (5, 6, 7)),
    SummaryRow(109, 119, "up_blocks.1", 2, 640, 10, 6, "output", (3, 4, 5), (8, 9, 10)),
    SummaryRow(121, 139, "mid_block", 10, 1280, 20, 10, "middle", (0,), (4,)),
)


def _processor_name(module: str, block_index: int) -> str:
    return f"{module}.transformer_blocks.{block_index}{PROCESSOR_SUFFIX}"


def _sd15_expected() -> list[AttnLayer]:
    return [AttnLayer(key, patch, t_index, width, heads, _processor_name(module, 0))
            for key, module, width, heads, _dim_head, patch, t_index in SD15_TABLE]


def _expand_summary_row(row: SummaryRow) -> list[AttnLayer]:
    layers, key = [], row.first_key
    for attention, (number, t_index) in enumerate(zip(row.comfy_numbers, row.transformer_indices)):
        module = f"{row.diffusers_block}.attentions.{attention}"
        for j in range(row.depth):
            layers.append(AttnLayer(key, (row.comfy_block, number, j), t_index, row.width, row.heads,
                                    _processor_name(module, j)))
            key += 2
    return layers


def _sdxl_expected() -> list[AttnLayer]:
    return [layer for row in SDXL_SUMMARY for layer in _expand_summary_row(row)]


def test_sd15_layout_equals_the_documented_table() -> None:
    assert list(SD15_LAYOUT.layers) == _sd15_expected()


def test_sd15_dim_head_per_row() -> None:
    for key, _module, width, heads, dim_head, _patch, _t in SD15_TABLE:
        layer = SD15_LAYOUT.layer_at(key)
        assert (layer.heads, layer.width // layer.heads) == (heads, dim_head)


def test_sdxl_summary_rows_are_self_consistent() -> None:
    """Guards the literal table itself: counts, key ranges and per-attention columns agree."""
    for row in SDXL_SUMMARY:
        assert row.count == len(row.comfy_numbers) * row.depth == (row.last_key - row.first_key) // 2 + 1
        assert len(row.comfy_numbers) == len(row.transformer_indices)
        assert row.width // row.heads == SDXL_HEAD_DIM
    assert sum(row.count for row in SDXL_SUMMARY) == SDXL_LAYER_COUNT


def test_sdxl_layout_equals_the_documented_summary() -> None:
    assert list(SDXL_LAYOUT.layers) == _sdxl_expected()


@pytest.mark.parametrize(
    ("layout", "family", "cross_dim", "count", "last_key"),
    [(SD15_LAYOUT, BaseFamily.SD15, SD15_CROSS_DIM, SD15_LAYER_COUNT, SD15_LAST_KEY),
     (SDXL_LAYOUT, BaseFamily.SDXL, SDXL_CROSS_DIM, SDXL_LAYER_COUNT, SDXL_LAST_KEY)],
    ids=["sd15", "sdxl"],
)
def test_keys_are_the_odd_numbers(layout: UNetLayout, family: BaseFamily, cross_dim: int, count: int,
                                  last_key: int) -> None:
    assert (layout.family, layout.cross_attention_dim, layout.num_layers) == (family, cross_dim, count)
    assert [layer.checkpoint_index for layer in layout.layers] == list(range(1, last_key + 1, 2))
    assert LAYOUTS[family] is layout


@pytest.mark.parametrize(
    ("layout", "width_sum", "ip_params"),
    [(SD15_LAYOUT, SD15_WIDTH_SUM, SD15_IP_PARAMS), (SDXL_LAYOUT, SDXL_WIDTH_SUM, SDXL_IP_PARAMS)],
    ids=["sd15", "sdxl"],
)
def test_widths_sum_to_the_published_parameter_count(layout: UNetLayout, width_sum: int, ip_params: int) -> None:
    total = sum(layer.width for layer in layout.layers)
    assert total == width_sum
    assert 2 * layout.cross_attention_dim * total == ip_params


@pytest.mark.parametrize(("layout", "middle_count"), [(SD15_LAYOUT, 1), (SDXL_LAYOUT, 10)], ids=["sd15", "sdxl"])
def test_middle_block_is_number_zero(layout: UNetLayout, middle_count: int) -> None:
    middle = [layer.patch_key for layer in layout.layers if layer.block == "middle"]
    assert middle == [("middle", 0, j) for j in range(middle_count)]
    assert not any(key[:2] == ("middle", 1) for key in (layer.patch_key for layer in layout.layers))


@pytest.mark.parametrize("layout", [SD15_LAYOUT, SDXL_LAYOUT], ids=["sd15", "sdxl"])
def test_layer_at_round_trips(layout: UNetLayout) -> None:
    for layer in layout.layers:
        assert layout.layer_at(layer.checkpoint_index) is layer


@pytest.mark.parametrize("layout", [SD15_LAYOUT, SDXL_LAYOUT], ids=["sd15", "sdxl"])
def test_patch_keys_are_unique(layout: UNetLayout) -> None:
    keys = [layer.patch_key for layer in layout.layers]
    assert len(set(keys)) == len(keys)


# diffusers configs of the real base models (only what shapes the attention processors matters).
_SD15_UNET = dict(cross_attention_dim=SD15_CROSS_DIM)  # the library defaults are the SD1.5 UNet
_SDXL_UNET = dict(
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=SDXL_CROSS_DIM,
)


@pytest.mark.parametrize(("layout", "config"), [(SD15_LAYOUT, _SD15_UNET), (SDXL_LAYOUT, _SDXL_UNET)],
                         ids=["sd15", "sdxl"])
def test_layout_matches_diffusers_processor_order(layout: UNetLayout, config: dict) -> None:
    """The key index is the position in `unet.attn_processors` (attn1 and attn2 both counted)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**config)
    names = list(unet.attn_processors)
    cross = [(i, n) for i, n in enumerate(names) if n.endswith(PROCESSOR_SUFFIX)]
    assert [(layer.checkpoint_index, layer.diffusers_name) for layer in layout.layers] == cross
    for layer in layout.layers:
        attn = unet.get_submodule(layer.diffusers_name.removesuffix(".processor"))
        assert (attn.to_k.out_features, attn.heads) == (layer.width, layer.heads)
