"""Apply IP-Adapter Tiled in the host: a square reference at tile size equals one plain Apply IP-Adapter; a wide
reference becomes overlapping square tiles whose masks cover their regions of the latent and together the whole
latent, and the result equals one Apply IP-Adapter per tile (its crop, its mask) stacked."""

from __future__ import annotations

import pytest
import torch

from tests.host.ipa_setup import SIGMA, PackNodes, adapter_groups, apply, text_conds, write_adapter
from tests.host.predict import host_eps
from tests.numerics import assert_relative_close

EXACT = 1e-6
BATCH_BOUND = 1e-5  # tiles encoded in one batch vs one at a time (float32, different GEMM blocking)
LATENT_HW = (8, 24)  # the wide reference's aspect ratio


@pytest.fixture(scope="module")
def setup(host_pack, tiny_sd15, tiny_clip_vision, host_models):
    nodes = PackNodes.of(host_pack)
    groups = adapter_groups("base", tiny_sd15, tiny_clip_vision, seed=71)
    adapter = nodes.load.load(write_adapter(host_models, groups, "tiled-base_sd15.safetensors"))[0]
    tiled = host_pack.node_class_mappings["ApplyIPAdapterTiled"]()
    return nodes, tiled, adapter, tiny_sd15, tiny_clip_vision.host


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _tiled(tiled, unet, adapter, clip, image, **kw):
    with torch.inference_mode():
        return tiled.apply(unet.patcher, adapter, clip, image, kw.pop("weight", 0.9), "linear", 0.0, 1.0,
                           kw.pop("sharpening", 0.0), "V only", **kw)


def _eps(model, unet, hw=(8, 8)):
    cond, _ = text_conds(unet)
    x = torch.randn(1, 4, *hw, generator=torch.Generator().manual_seed(72))
    return host_eps(model, x, SIGMA, cond)[0]


def test_square_reference_at_tile_size_equals_one_plain_apply(setup, host_pack) -> None:
    nodes, tiled, adapter, unet, clip = setup
    tile = host_pack.module.ip_adapter.tiles.TILE_SIZE
    image = _image(tile, tile, seed=73)
    model, tiles, masks = _tiled(tiled, unet, adapter, clip, image)
    assert torch.equal(tiles, image) and torch.equal(masks, torch.ones_like(masks)) and masks.shape[0] == 1
    with torch.inference_mode():
        prompt = nodes.encode.encode(clip, image, "center")[0]
    plain = apply(nodes, unet.patcher, adapter, prompt, 0.9)
    assert_relative_close(_eps(model, unet), _eps(plain, unet), EXACT)


def test_wide_reference_tiles_cover_the_latent_and_equal_stacked_applies(setup, host_pack) -> None:
    nodes, tiled, adapter, unet, clip = setup
    core = host_pack.module.ip_adapter
    image = _image(64, 192, seed=74)
    model, tiles, masks = _tiled(tiled, unet, adapter, clip, image)
    grid = core.tiles.tile_grid(64, 192)
    assert [(t.top, t.left, t.size) for t in grid.tiles] == [(0, 0, 64), (0, 64, 64), (0, 128, 64)]
    assert torch.equal(tiles, torch.cat(core.tiles.crop_tiles(image, grid)))
    per_cell = core.masks.mask_for_queries(masks, LATENT_HW[0] * LATENT_HW[1], LATENT_HW)[..., 0]
    per_cell = per_cell.view(-1, *LATENT_HW)
    assert torch.allclose(per_cell.sum(dim=0), torch.ones(LATENT_HW), atol=1e-6)  # the union covers the latent
    for i, mask in enumerate(per_cell):  # each tile covers its third of the latent's width
        assert (mask[:, 8 * i:8 * (i + 1)] > 0).all() and (mask[:, :max(0, 8 * i - 1)] == 0).all()
    stacked = unet.patcher
    for i in range(3):
        with torch.inference_mode():
            prompt = nodes.encode.encode(clip, tiles[i:i + 1], "center")[0]
        stacked = apply(nodes, stacked, adapter, prompt, 0.9, attn_mask=masks[i:i + 1])
    assert_relative_close(_eps(model, unet, LATENT_HW), _eps(stacked, unet, LATENT_HW), BATCH_BOUND)
    keys = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(len(patch.contributions) == 3 for patch in keys.values())


def test_attention_mask_restricts_every_tile(setup) -> None:
    _, tiled, adapter, unet, clip = setup
    left = torch.zeros(1, 64, 192)
    left[..., :96] = 1.0
    _, _, masks = _tiled(tiled, unet, adapter, clip, _image(64, 192, seed=75), weight=0.0, attn_mask=left)
    assert masks[2].abs().max() == 0 and masks[0].max() == 1.0
