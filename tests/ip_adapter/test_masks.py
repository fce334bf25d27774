"""Mask geometry: a mask in the latent's aspect ratio resized to every layer's query grid, odd latents included."""

from __future__ import annotations

import math

import pytest
import torch

from ip_adapter.masks import mask_for_queries

TIGHT_TOLERANCE = 1e-6


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()

#: ComfyUI's UNet halves the latent grid at each level; SD1.5 attends at 1, 1/2, 1/4 and 1/8 of the latent.
DOWNSAMPLE_FACTORS = (1, 2, 4, 8)


def _left_half(height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[..., : width // 2] = 1.0
    return mask


def _expected_left_half(grid_h: int, grid_w: int) -> torch.Tensor:
    return _left_half(grid_h, grid_w).reshape(1, grid_h * grid_w, 1)


@pytest.mark.parametrize("latent_hw", [(64, 64), (64, 96), (96, 64), (128, 80)], ids=str)
@pytest.mark.parametrize("factor", DOWNSAMPLE_FACTORS)
def test_left_half_mask_is_exact_on_block_aligned_grids(latent_hw: tuple[int, int], factor: int) -> None:
    grid = (latent_hw[0] // factor, latent_hw[1] // factor)
    resized = mask_for_queries(_left_half(*latent_hw), grid[0] * grid[1], latent_hw)
    assert torch.equal(resized, _expected_left_half(*grid))


def test_several_masks_keep_their_order() -> None:
    latent_hw, factor = (64, 96), 2
    left = _left_half(*latent_hw)
    masks = torch.cat([left, 1.0 - left])
    grid = (latent_hw[0] // factor, latent_hw[1] // factor)
    resized = mask_for_queries(masks, grid[0] * grid[1], latent_hw)
    expected = _expected_left_half(*grid)
    assert resized.shape == (2, grid[0] * grid[1], 1)
    assert torch.equal(resized[0], expected[0]) and torch.equal(resized[1], 1.0 - expected[0])


GREY = 0.5


def test_continuous_values_survive() -> None:
    latent_hw, grid = (32, 32), (16, 16)
    grey = torch.full((1, *latent_hw), GREY)
    resized = mask_for_queries(grey, grid[0] * grid[1], latent_hw)
    assert torch.equal(resized, torch.full((1, grid[0] * grid[1], 1), GREY))


# 61 queries on an 8x8 latent: the grid recovered is 8 x 7 = 56 cells, so 5 zeros pad it, 2 before and 3 after.
PAD_LATENT, PAD_QUERIES, PAD_GRID, PAD_BEFORE, PAD_AFTER = (8, 8), 61, (8, 7), 2, 3


def test_grid_that_does_not_tile_is_zero_padded_at_both_ends() -> None:
    resized = mask_for_queries(torch.ones(1, *PAD_LATENT), PAD_QUERIES, PAD_LATENT)
    cells = PAD_GRID[0] * PAD_GRID[1]
    expected = torch.cat([torch.zeros(PAD_BEFORE), torch.ones(cells), torch.zeros(PAD_AFTER)]).reshape(1, -1, 1)
    assert torch.equal(resized, expected)


# Odd latents (e.g. 520x512 px -> 65x64): each UNet level halves with ceil, so one level down a 65x64 latent is
# attended as 33 x 32 queries. The sqrt estimate alone would give 32 x 33 and shear the mask.
ODD_LATENTS = ((65, 64), (63, 64), (97, 128))


@pytest.mark.parametrize("latent_hw", ODD_LATENTS, ids=str)
@pytest.mark.parametrize("factor", DOWNSAMPLE_FACTORS)
def test_odd_latents_recover_the_true_grid(latent_hw: tuple[int, int], factor: int) -> None:
    grid = (math.ceil(latent_hw[0] / factor), latent_hw[1] // factor)
    resized = mask_for_queries(_left_half(*latent_hw), grid[0] * grid[1], latent_hw)
    assert resized.shape == (1, grid[0] * grid[1], 1)
    assert _max_diff(resized, _expected_left_half(*grid)) <= TIGHT_TOLERANCE
