"""Mask geometry: a spatial mask in the latent's aspect ratio, resized to one value per query token of a layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GRID_EPS = 1e-6
MAX_UNET_LEVELS = 8


def query_grid(num_queries: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of a layer with `num_queries` tokens in a UNet whose input latent is `latent_hw`.

    UNet levels halve the latent with padding (ceil), so the grid is found exactly by trying each power-of-two
    downsampling; anything else falls back to the aspect-ratio estimate (the result then tiles approximately).
    """
    lh, lw = latent_hw
    for level in range(MAX_UNET_LEVELS):
        factor = 2**level
        h, w = math.ceil(lh / factor), math.ceil(lw / factor)
        if h * w == num_queries:
            return h, w
    # The epsilon keeps float error in the square root from truncating an exact grid height (4.0 -> 3).
    grid_h = max(1, int(lh / math.sqrt(lh * lw / num_queries) + GRID_EPS))
    grid_h += int(num_queries % grid_h != 0)
    return grid_h, num_queries // grid_h


def mask_for_queries(mask: torch.Tensor, num_queries: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a spatial mask to one value per query token of a layer.

    Args:
        mask: values in 0..1 (continuous allowed), in the latent's aspect ratio. Shape: (M, H, W).
        num_queries: the layer's query count (its h * w).
        latent_hw: the latent's (height, width), to recover the layer's grid.

    Returns:
        Shape: (M, num_queries, 1); bilinear resize, then zero-padded at both ends if the grid does not tile
        `num_queries` exactly.
    """
    grid_h, grid_w = query_grid(num_queries, latent_hw)
    resized = F.interpolate(mask[:, None].float(), size=(grid_h, grid_w), mode="bilinear")
    flat = resized.flatten(1)
    diff = num_queries - flat.shape[1]  # >= 0: the grid never exceeds the query count
    return F.pad(flat, (diff // 2, diff - diff // 2))[..., None]


def as_mask_batch(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A MASK input, (H, W) or (M, H, W), as float (M, H, W) on the CPU; None stays None."""
    if mask is None:
        return None
    return (mask if mask.dim() == 3 else mask[None]).float().cpu()
