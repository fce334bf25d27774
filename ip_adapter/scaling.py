"""`embeds_scaling`: where an adapter's weight enters its image attention (outside it, or on K and V)."""

from __future__ import annotations

import torch

from .errors import InvalidOptionError

EMBEDS_SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
#: The C-penalty modes scale a layer's weight by its width relative to the widest SD layers.
C_PENALTY_WIDTH = 1280


def check_embeds_scaling(mode: str) -> None:
    """Raise InvalidOptionError unless `mode` is one of EMBEDS_SCALING."""
    if mode not in EMBEDS_SCALING:
        raise InvalidOptionError(f"Unknown embeds_scaling '{mode}'; choose one of {', '.join(EMBEDS_SCALING)}.")


def _mean_per_image(v: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """Each image's token mean, broadcast back over its tokens. v: (R, N * T, W) -> same shape."""
    rows, tokens, width = v.shape
    per_image = tokens_per_image if tokens_per_image > 0 and tokens % tokens_per_image == 0 else tokens
    grouped = v.reshape(rows, tokens // per_image, per_image, width)
    return grouped.mean(dim=2, keepdim=True).expand_as(grouped).reshape(rows, tokens, width)


def scale_embeds(
    k: torch.Tensor, v: torch.Tensor, weight: float, mode: str, tokens_per_image: int = 0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Apply an `embeds_scaling` mode: returns the K, V to attend to and the weight left on the output.

    "V only" is the original IP-Adapter scale; "K+V" puts the weight inside the attention (it also acts as a
    logit temperature); the C-penalty modes first scale it by width / 1280; "K+mean(V)" scales only the token mean
    of V, taken per reference image when several images are concatenated. Weight 0 is always "off" (callers skip
    the term).

    Args:
        k, v: image keys and values. Shape: (R, N * T, W) for N images of T tokens.
        tokens_per_image: T; 0 (or a T that does not divide the token count) treats all tokens as one image.
    """
    if mode == "V only":
        return k, v, weight
    check_embeds_scaling(mode)
    if mode != "K+V":
        weight = weight * k.shape[-1] / C_PENALTY_WIDTH
    if mode == "K+mean(V) w/ C penalty":
        mean = _mean_per_image(v, tokens_per_image)
        return k * weight, (v - mean) + mean * weight, 1.0
    return k * weight, v * weight, 1.0
