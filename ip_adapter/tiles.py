"""Tiling a reference of any aspect ratio or size into overlapping square tiles, and the mask of each tile.

The reference is laid over the whole latent (stretched to its aspect ratio, as a mask is), so the tile covering a
fraction of the reference conditions the same fraction of the latent. Tiles are squares of one side, evenly spread
so that together they cover the whole reference (nothing is cropped away); where tiles overlap, their masks share
the weight (they sum to 1 everywhere), so the image term keeps the node's weight across seams.

Tile side: the short side of the reference (one row of tiles along the long side). A reference at least
`2 * TILE_SIZE` pixels on its short side gets two rows of tiles of half that side, when that makes at most `MAX_TILES`
tiles, so large references keep more detail (each tile is resized to the encoder's size). A square reference smaller
than `2 * TILE_SIZE` is one tile: the plain image prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InvalidOptionError

#: Short side from which a reference gets two rows of tiles (the peer's tile size is 256).
TILE_SIZE = 256
MAX_TILES = 8
#: References longer than this many times their short side are refused (tiles would be slivers of detail).
MAX_ASPECT = 16
#: Long side of the masks the node returns (reference geometry, never upscaled).
MASK_LONG_SIDE = 512


@dataclass(frozen=True)
class Tile:
    """A square of the reference, in pixels."""

    top: int
    left: int
    size: int


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a `height` x `width` reference, row by row."""

    height: int
    width: int
    tiles: tuple[Tile, ...]

    @property
    def size(self) -> int:
        return self.tiles[0].size


def tile_side(height: int, width: int, tile_size: int = TILE_SIZE, max_tiles: int = MAX_TILES) -> int:
    """The side of the square tiles of a `height` x `width` reference (module docstring)."""
    short, long = min(height, width), max(height, width)
    if short >= 2 * tile_size:
        half = math.ceil(short / 2)
        if 2 * math.ceil(long / half) <= max_tiles:
            return half
    return short


def axis_starts(length: int, size: int) -> list[int]:
    """Starts of the fewest tiles of `size` that cover 0..length, spread evenly (first at 0, last at the end)."""
    count = math.ceil(length / size)
    if count == 1:
        return [0]
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def tile_grid(height: int, width: int, tile_size: int = TILE_SIZE) -> TileGrid:
    """The overlapping square tiles that cover a `height` x `width` reference.

    Raises:
        InvalidOptionError: an empty reference, or one more than MAX_ASPECT times longer than wide (or tall).
    """
    if height < 1 or width < 1:
        raise InvalidOptionError(f"The reference image is {width}x{height} pixels; it must not be empty.")
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise InvalidOptionError(
            f"The reference image is {width}x{height} pixels, more than {MAX_ASPECT}:1; its tiles would be too thin "
            f"to carry detail. Crop it to at most {MAX_ASPECT}:1 first.")
    side = tile_side(height, width, tile_size)
    tiles = tuple(Tile(top, left, side) for top in axis_starts(height, side) for left in axis_starts(width, side))
    return TileGrid(height, width, tiles)


def crop_tiles(images: torch.Tensor, grid: TileGrid) -> list[torch.Tensor]:
    """Each tile's crop of every image. images: IMAGE (B, H, W, C) -> one (B, S, S, C) per tile."""
    return [images[:, t.top:t.top + t.size, t.left:t.left + t.size] for t in grid.tiles]


def mask_shape(grid: TileGrid, long_side: int = MASK_LONG_SIDE) -> tuple[int, int]:
    """(h, w) of the masks: the reference's aspect ratio, long side at most `long_side`."""
    scale = min(1.0, long_side / max(grid.height, grid.width))
    return max(1, round(grid.height * scale)), max(1, round(grid.width * scale))


def _cover(start: int, size: int, length: int, cells: int) -> torch.Tensor:
    """1 where a cell's centre (of `cells` across `length` pixels) lies in start..start+size. Shape: (cells,)."""
    centres = (torch.arange(cells, dtype=torch.float64) + 0.5) * (length / cells)
    return ((centres >= start) & (centres < start + size)).double()


def tile_masks(grid: TileGrid, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Each tile's mask over the reference, sharing the weight where tiles overlap (the masks sum to 1 everywhere).

    Returns:
        Shape: (tiles, h, w), float32 in 0..1, (h, w) = `shape` or `mask_shape(grid)`.
    """
    h, w = shape or mask_shape(grid)
    cover = torch.stack([_cover(t.top, t.size, grid.height, h)[:, None] * _cover(t.left, t.size, grid.width, w)[None]
                         for t in grid.tiles])
    return (cover / cover.sum(dim=0, keepdim=True)).float()


def restrict_masks(masks: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """Tile masks (N, h, w) times an attention mask (H, W) or (1, H, W) in the latent's aspect ratio, resized."""
    if attn_mask is None:
        return masks
    region = attn_mask.reshape(-1, *attn_mask.shape[-2:])[:1, None].float()
    region = F.interpolate(region, size=masks.shape[-2:], mode="bilinear")[0]
    return masks * region
