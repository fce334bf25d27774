"""Tiling geometry: square tiles that cover any reference without cropping, spread evenly, two rows for large
references, masks that share the weight in overlaps and cover each tile's region of the latent."""

from __future__ import annotations

import pytest
import torch

from ip_adapter import InvalidOptionError
from ip_adapter.masks import mask_for_queries
from ip_adapter.tiles import (
    MAX_ASPECT,
    MAX_TILES,
    TILE_SIZE,
    axis_starts,
    crop_tiles,
    restrict_masks,
    tile_grid,
    tile_masks,
)

SIZES = [(256, 256), (300, 300), (512, 512), (256, 768), (768, 256), (512, 2048), (1024, 3000), (100, 300),
         (64, 200), (37, 500), (2000, 1500)]


def _covered(grid) -> torch.Tensor:
    cover = torch.zeros(grid.height, grid.width)
    for t in grid.tiles:
        cover[t.top:t.top + t.size, t.left:t.left + t.size] += 1
    return cover


@pytest.mark.parametrize("hw", SIZES, ids=str)
def test_square_tiles_cover_the_whole_reference(hw: tuple[int, int]) -> None:
    grid = tile_grid(*hw)
    assert all(t.size == grid.size and t.top + t.size <= hw[0] and t.left + t.size <= hw[1] for t in grid.tiles)
    assert _covered(grid).min() >= 1
    assert len(grid.tiles) <= max(MAX_TILES, MAX_ASPECT)


def test_tile_counts() -> None:
    assert len(tile_grid(TILE_SIZE, TILE_SIZE).tiles) == 1
    assert len(tile_grid(2 * TILE_SIZE - 1, 2 * TILE_SIZE - 1).tiles) == 1  # below two rows: the whole image
    assert len(tile_grid(2 * TILE_SIZE, 2 * TILE_SIZE).tiles) == 4
    assert len(tile_grid(256, 768).tiles) == 3
    assert len(tile_grid(1024, 3000).tiles) == 3  # two rows would make 12 tiles: one row of 1024-pixel tiles


def test_starts_are_even_and_reach_both_ends() -> None:
    assert axis_starts(256, 256) == [0]
    assert axis_starts(600, 256) == [0, 172, 344]
    assert axis_starts(512, 256) == [0, 256]


def test_bad_references_are_refused() -> None:
    with pytest.raises(InvalidOptionError, match="more than 16:1"):
        tile_grid(10, 170)
    with pytest.raises(InvalidOptionError, match="must not be empty"):
        tile_grid(0, 10)


def test_crops_are_the_tiles() -> None:
    images = torch.rand(2, 256, 600, 3)
    grid = tile_grid(256, 600)
    crops = crop_tiles(images, grid)
    assert [tuple(c.shape) for c in crops] == [(2, 256, 256, 3)] * 3
    assert torch.equal(crops[1], images[:, :, 172:428])


@pytest.mark.parametrize("hw", SIZES, ids=str)
def test_masks_sum_to_one_and_cover_their_tile(hw: tuple[int, int]) -> None:
    grid = tile_grid(*hw)
    masks = tile_masks(grid)
    assert masks.shape[0] == len(grid.tiles) and max(masks.shape[1:]) <= 512
    assert torch.allclose(masks.sum(dim=0), torch.ones(masks.shape[1:]), atol=1e-6)
    h, w = masks.shape[1:]
    for mask, t in zip(masks, grid.tiles):
        rows = ((torch.arange(h) + 0.5) * hw[0] / h - t.top).clamp(min=-1)
        cols = ((torch.arange(w) + 0.5) * hw[1] / w - t.left).clamp(min=-1)
        inside = ((rows >= 0) & (rows < t.size))[:, None] & ((cols >= 0) & (cols < t.size))[None]
        assert (mask[inside] > 0).all() and (mask[~inside] == 0).all()


@pytest.mark.parametrize("latent_hw", [(8, 24), (16, 16), (12, 40)])
def test_each_tile_conditions_its_latent_region(latent_hw: tuple[int, int]) -> None:
    """At the latent's own grid, every cell whose centre lies in a tile's region (the tile's fraction of the
    reference laid over the latent) gets that tile's mask, and the union covers the whole latent."""
    grid = tile_grid(256, 768)
    per_cell = mask_for_queries(tile_masks(grid), latent_hw[0] * latent_hw[1], latent_hw)[..., 0]
    per_cell = per_cell.view(-1, *latent_hw)
    assert torch.allclose(per_cell.sum(dim=0), torch.ones(latent_hw), atol=1e-5)
    lh, lw = latent_hw
    for mask, t in zip(per_cell, grid.tiles):
        y = (torch.arange(lh) + 0.5) / lh * grid.height
        x = (torch.arange(lw) + 0.5) / lw * grid.width
        inside = ((y >= t.top) & (y < t.top + t.size))[:, None] & ((x >= t.left) & (x < t.left + t.size))[None]
        assert (mask[inside] > 0).all()


def test_attention_mask_restricts_every_tile() -> None:
    grid = tile_grid(256, 512)
    masks = tile_masks(grid)
    left_half = torch.zeros(1, 64, 64)
    left_half[..., :32] = 1.0
    restricted = restrict_masks(masks, left_half)
    middle, seam = masks.shape[-1] // 2, masks.shape[-1] // 64  # bilinear upsampling blurs one source pixel
    assert restricted[..., middle + seam:].abs().max() == 0
    assert torch.equal(restricted[..., :middle - seam], masks[..., :middle - seam])
    assert restrict_masks(masks, None) is masks
