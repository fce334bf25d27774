"""Decoupled cross-attention: `Attn(q, k_text, v_text) + sum_i w_i * Attn(q, K_i, V_i)` per head.

q/k/v arrive projected, `[B, N, heads * dim_head]`, as ComfyUI's attn2 replace hook and diffusers' processors hold
them; the result is in the same pre-`to_out` space. The attention function is a parameter so the host can pass its
own `optimized_attention`; `sdpa_attention` is the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import InvalidOptionError

#: (q, k, v, heads) -> output, all `[B, N, heads * dim_head]`.
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

#: `cond_or_uncond` value of the unconditional chunk in ComfyUI's batches (0 = positive prompt).
NEGATIVE_CHUNK = 1
EMBEDS_SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
#: The C-penalty modes scale a layer's weight by its width relative to the widest SD layers.
C_PENALTY_WIDTH = 1280
GRID_EPS = 1e-6
MAX_UNET_LEVELS = 8


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Reference multi-head attention, softmax(q k^T / sqrt(d)) v per head."""
    b, _, inner = q.shape
    split = [t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*split)
    return out.transpose(1, 2).reshape(b, -1, inner)


@dataclass(frozen=True)
class ImageTerm:
    """One adapter's image branch at one layer for the current batch.

    Attributes:
        k: image keys, one row per batch row. Shape: (B, T, heads * dim_head).
        v: image values. Shape: (B, T, heads * dim_head).
        weight: the branch's scale (lambda); 0 means the branch is skipped entirely.
        mask: optional spatial mask multiplying the branch output. Shape: (B or 1, Nq, 1).
    """

    k: torch.Tensor
    v: torch.Tensor
    weight: float
    mask: torch.Tensor | None = None


def image_attention(q: torch.Tensor, term: ImageTerm, heads: int, attention_fn: AttentionFn) -> torch.Tensor:
    """`weight * Attn(q, K, V) [* mask]`, with K/V cast to q's device and dtype."""
    k, v = (t.to(device=q.device, dtype=q.dtype) for t in (term.k, term.v))
    out = attention_fn(q, k, v, heads)
    if term.mask is not None:
        out = out * term.mask.to(device=q.device, dtype=q.dtype)
    return out * term.weight


def decoupled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    terms: Sequence[ImageTerm],
    attention_fn: AttentionFn = sdpa_attention,
) -> torch.Tensor:
    """Text attention plus every image term; terms with weight 0 add nothing and cost nothing."""
    out = attention_fn(q, k, v, heads)
    for term in terms:
        if term.weight != 0:
            out = out + image_attention(q, term, heads, attention_fn)
    return out


def rows_for_chunks(
    positive: torch.Tensor, negative: torch.Tensor, chunks: Sequence[int], rows_per_chunk: int
) -> torch.Tensor:
    """Stack per-row image tokens (or K/V) for a batch made of chunks.

    Args:
        positive: the conditional rows' tensor. Shape: (1, T, W).
        negative: the unconditional rows' tensor. Shape: (1, T, W).
        chunks: ComfyUI's `cond_or_uncond`: one entry per chunk; NEGATIVE_CHUNK selects `negative`.
        rows_per_chunk: batch rows in each chunk.

    Returns:
        Shape: (len(chunks) * rows_per_chunk, T, W).
    """
    parts = [(negative if c == NEGATIVE_CHUNK else positive).expand(rows_per_chunk, -1, -1) for c in chunks]
    return torch.cat(parts, dim=0)


def check_embeds_scaling(mode: str) -> None:
    """Raise InvalidOptionError unless `mode` is one of EMBEDS_SCALING."""
    if mode not in EMBEDS_SCALING:
        raise InvalidOptionError(f"Unknown embeds_scaling '{mode}'; choose one of {', '.join(EMBEDS_SCALING)}.")


def scale_embeds(
    k: torch.Tensor, v: torch.Tensor, weight: float, mode: str
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Apply an `embeds_scaling` mode: returns the K, V to attend to and the weight left on the output.

    "V only" is the original IP-Adapter scale; "K+V" puts the weight inside the attention (it also acts as a
    logit temperature); the C-penalty modes first scale it by width / 1280; "K+mean(V)" scales only V's token
    mean. Weight 0 is always "off" (callers skip the term).
    """
    if mode == "V only":
        return k, v, weight
    check_embeds_scaling(mode)
    if mode != "K+V":
        weight = weight * k.shape[-1] / C_PENALTY_WIDTH
    if mode == "K+mean(V) w/ C penalty":
        mean = v.mean(dim=1, keepdim=True)
        return k * weight, (v - mean) + mean * weight, 1.0
    return k * weight, v * weight, 1.0


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
