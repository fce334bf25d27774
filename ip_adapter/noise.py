"""Negative images for an image prompt's unconditional side: the reference (or a black square) degraded by noise.

Encoding such an image as the negative pushes sampling away from "noise" instead of away from "no image", which
users of the peer pack rely on to reduce burned or over-stylised results. Every type is deterministic for a seed
(a CPU generator, so the same seed gives the same image on every device).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .errors import InvalidOptionError

NOISE_TYPES = ("fade", "dissolve", "gaussian", "shuffle")
#: Side of the black square used when no image is given (the encoders' input size).
DEFAULT_SIDE = 224
#: The blur kernel spans +-radius pixels with a standard deviation of radius / BLUR_SIGMAS.
BLUR_SIGMAS = 3.0
RGB = 3


def _fade(base: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    return torch.lerp(base, torch.rand(base.shape, generator=g), strength)


def _dissolve(base: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    noise = torch.rand(base.shape, generator=g)
    replaced = torch.rand(*base.shape[:-1], 1, generator=g) < strength
    return torch.where(replaced, noise, base)


def _gaussian(base: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    return base + strength * torch.randn(base.shape, generator=g)


def _shuffle(base: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    b, h, w, c = base.shape
    flat = base.reshape(b, h * w, c).clone()
    moved = round(strength * h * w)
    for i in range(b):
        chosen = torch.randperm(h * w, generator=g)[:moved]
        flat[i, chosen] = flat[i, chosen[torch.randperm(moved, generator=g)]]
    return flat.reshape(b, h, w, c)


_NOISES: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "fade": _fade, "dissolve": _dissolve, "gaussian": _gaussian, "shuffle": _shuffle,
}


def gaussian_blur(images: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur, edges reflected (replicated when the image is smaller than the kernel).

    Args:
        images: IMAGE batch. Shape: (B, H, W, C).
        radius: kernel half-width in pixels; 0 returns the images unchanged.
    """
    if radius <= 0:
        return images
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x * BLUR_SIGMAS / radius) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    b, h, w, c = images.shape
    pixels = images.permute(0, 3, 1, 2).reshape(b * c, 1, h, w)
    mode = "reflect" if min(h, w) > radius else "replicate"
    pixels = F.conv2d(F.pad(pixels, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    pixels = F.conv2d(F.pad(pixels, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return pixels.reshape(b, c, h, w).permute(0, 2, 3, 1)


def negative_noise(kind: str, strength: float, blur: int, seed: int, image: torch.Tensor | None = None,
                   side: int = DEFAULT_SIDE) -> torch.Tensor:
    """A noisy negative image for each reference.

    Types: "fade" blends towards uniform noise; "dissolve" replaces a `strength` fraction of the pixels by noise;
    "gaussian" adds Gaussian noise of standard deviation `strength`; "shuffle" swaps a `strength` fraction of the
    pixels among themselves (colours kept, structure destroyed; on the black default it stays black).

    Args:
        kind: one of NOISE_TYPES.
        strength: 0 (the base unchanged) .. 1.
        blur: Gaussian blur radius applied last, in pixels (0 = none).
        seed: the noise seed.
        image: base images (alpha dropped), or None for one black `side` x `side` square. Shape: (B, H, W, C).

    Returns:
        IMAGE in 0..1. Shape: (B, H, W, 3).
    """
    if kind not in _NOISES:
        raise InvalidOptionError(f"Unknown noise type '{kind}'; choose one of {', '.join(NOISE_TYPES)}.")
    base = torch.zeros(1, side, side, RGB) if image is None else image[..., :RGB].float().cpu()
    generator = torch.Generator().manual_seed(int(seed))
    noisy = _NOISES[kind](base, float(strength), generator)
    return gaussian_blur(noisy.clamp(0.0, 1.0), int(blur)).clamp(0.0, 1.0)
