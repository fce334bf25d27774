"""Decoupled cross-attention: `Attn(q, k_text, v_text) + sum_i w_i * Attn(q, K_i, V_i)` per head.

q/k/v arrive projected, `[B, N, heads * dim_head]`, as ComfyUI's attn2 replace hook and diffusers' processors hold
them; the result is in the same pre-`to_out` space. The attention function is a parameter so the host can pass its
own `optimized_attention`; `sdpa_attention` is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

#: (q, k, v, heads) -> output, all `[B, N, heads * dim_head]`.
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


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
    text_attention: AttentionFn | None = None,
) -> torch.Tensor:
    """Text attention plus every image term; terms with weight 0 add nothing and cost nothing.

    Args:
        text_attention: computes the text part instead of `attention_fn` (e.g. another pack's patch that was at the
            layer first); the image terms always use `attention_fn`.
    """
    out = (text_attention or attention_fn)(q, k, v, heads)
    for term in terms:
        if term.weight != 0:
            out = out + image_attention(q, term, heads, attention_fn)
    return out
