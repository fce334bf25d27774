"""Preparing reference images for a CLIP vision encoder: a square crop at a chosen position, padding to a square, and
contrast-adaptive sharpening (CAS).

Crops and padding work on ComfyUI IMAGE tensors `(B, H, W, C)` in 0..1, before the encoder's resize; sharpening works
on the resized pixels `(B, C, S, S)` in 0..1, so its strength does not depend on the input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InvalidOptionError

#: `crop` options of Encode Image Prompt, in the node contract's order ("center" is the default).
CROP_MODES = ("center", "none", "top", "bottom", "left", "right", "pad")
START, MIDDLE, END = "start", "middle", "end"
#: Modes that cut the largest square before resizing: where it sits (vertically, horizontally).
CROP_POSITIONS = {"top": (START, MIDDLE), "bottom": (END, MIDDLE), "left": (MIDDLE, START), "right": (MIDDLE, END)}
#: CAS sharpens with a negative-lobe weight of up to 1/5 (AMD FidelityFX CAS's strongest setting, "lerp(8, 5, 1)").
CAS_MAX_LOBE = 1.0 / 5.0
#: Guards the CAS amplitude's division on black neighbourhoods (their amplitude is 0 anyway).
CAS_EPS = 1e-8


def check_crop(mode: str) -> None:
    """Raise InvalidOptionError unless `mode` is one of CROP_MODES."""
    if mode not in CROP_MODES:
        raise InvalidOptionError(f"Unknown crop '{mode}'; choose one of {', '.join(CROP_MODES)}.")


def _offset(free: int, where: str) -> int:
    """Start of the square when `free` pixels are left over; the middle rounds down, as the host's centre crop."""
    return {START: 0, MIDDLE: free // 2, END: free}[where]


def crop_square(images: torch.Tensor, position: str) -> torch.Tensor:
    """The largest square of each image, at `position` along the long side.

    `top` / `bottom` pick the upper or lower square of a portrait image, `left` / `right` the leftmost or rightmost
    square of a landscape one; along the short side (and for the other orientation) the square is centred.

    Args:
        images: IMAGE batch. Shape: (B, H, W, C).
        position: "top", "bottom", "left" or "right".

    Returns:
        Shape: (B, S, S, C) with S = min(H, W).
    """
    if position not in CROP_POSITIONS:
        raise InvalidOptionError(f"Unknown crop position '{position}'; choose one of {', '.join(CROP_POSITIONS)}.")
    _, h, w, _ = images.shape
    side = min(h, w)
    fy, fx = CROP_POSITIONS[position]
    y, x = _offset(h - side, fy), _offset(w - side, fx)
    return images[:, y:y + side, x:x + side, :]


def pad_square(images: torch.Tensor) -> torch.Tensor:
    """Pad the short side of each image to a square, keeping the whole picture.

    Each added band is filled with the average colour of the image edge it extends (per image and channel), so the
    encoder sees a continuation of the border rather than hard black bars.

    Args:
        images: IMAGE batch. Shape: (B, H, W, C).

    Returns:
        Shape: (B, S, S, C) with S = max(H, W); the original sits in the middle.
    """
    b, h, w, c = images.shape
    if h == w:
        return images
    side = max(h, w)
    before = (side - min(h, w)) // 2
    if h > w:  # portrait: bands on the left and right
        first, last = images[:, :, :1, :].mean(dim=1, keepdim=True), images[:, :, -1:, :].mean(dim=1, keepdim=True)
        bands = (first.expand(b, h, before, c), last.expand(b, h, side - w - before, c))
        return torch.cat([bands[0], images, bands[1]], dim=2)
    first, last = images[:, :1, :, :].mean(dim=2, keepdim=True), images[:, -1:, :, :].mean(dim=2, keepdim=True)
    bands = (first.expand(b, before, w, c), last.expand(b, side - h - before, w, c))
    return torch.cat([bands[0], images, bands[1]], dim=1)


def square_for_encoder(images: torch.Tensor, mode: str) -> tuple[torch.Tensor, bool]:
    """Apply `mode` before the encoder's own resize.

    Returns:
        The images to resize, and whether that resize should centre-crop (True) or stretch (False): "center" is the
        host's own centre crop (resize the short side, cut the middle), "none" stretches, the positional modes and
        "pad" hand over a square (cropping it is a no-op).
    """
    check_crop(mode)
    if mode in CROP_POSITIONS:
        return crop_square(images, mode), True
    if mode == "pad":
        return pad_square(images), True
    return images, mode == "center"


def _neighbours(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre, 4-neighbour stack, diagonal stack) of every pixel, edges replicated. Stacks: (4, B, C, H, W)."""
    h, w = pixels.shape[-2:]
    padded = F.pad(pixels, (1, 1, 1, 1), mode="replicate")

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    cross = torch.stack([shifted(-1, 0), shifted(1, 0), shifted(0, -1), shifted(0, 1)])
    diagonal = torch.stack([shifted(-1, -1), shifted(-1, 1), shifted(1, -1), shifted(1, 1)])
    return pixels, cross, diagonal


def cas_sharpen(pixels: torch.Tensor, amount: float) -> torch.Tensor:
    """Contrast-adaptive sharpening (after AMD FidelityFX CAS), per channel.

    Each pixel becomes `(c + w * (n + s + e + o)) / (1 + 4 w)` with its four neighbours n, s, e, o and a negative
    lobe `w = -amount / 5 * amp`. The amplitude `amp = sqrt(min(lo, 2 - hi) / hi)` uses CAS's soft extrema
    (lo = min of the cross + min of the 3x3 box, hi likewise with max): flat and already high-contrast areas get
    little sharpening, so edges sharpen without ringing. Linear gradients are unchanged.

    Args:
        pixels: images in 0..1. Shape: (B, C, H, W).
        amount: 0 (unchanged) .. 1 (CAS's strongest lobe, 1/5).

    Returns:
        Sharpened pixels in 0..1, same shape.
    """
    if amount == 0:
        return pixels
    center, cross, diagonal = _neighbours(pixels)
    with_center = torch.cat([cross, center[None]])
    box = torch.cat([with_center, diagonal])
    lo = with_center.amin(dim=0) + box.amin(dim=0)
    hi = with_center.amax(dim=0) + box.amax(dim=0)
    amp = (torch.minimum(lo, 2.0 - hi) / hi.clamp_min(CAS_EPS)).clamp(0.0, 1.0).sqrt()
    lobe = -amount * CAS_MAX_LOBE * amp
    return ((center + lobe * cross.sum(dim=0)) / (1.0 + 4.0 * lobe)).clamp(0.0, 1.0)
