"""InstantX SD3.5-Large per-block adapter layers and their joint image attention.

Per block, the image tokens are adaLN-modulated by the resampler's timestep embedding (shift first, then scale),
projected to keys and values and RMS-normalised per head; the block's image-stream queries and keys, taken *before*
the block's own q/k norms, are normalised by the adapter's own norms; one attention runs over the image stream's
keys plus the adapter's keys (no text), and `scale * result` joins the image stream's attention output before its
out-projection (diffusers `SD3IPAdapterJointAttnProcessor2_0`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..statedict import StateDict, shape_of

#: (q, k, v, heads) -> output, all `[B, N, heads * dim_head]` (the host's attention, or SDPA in tests).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
RMS_EPS = 1e-6
ADALN_EPS = 1e-6
LAYER_KEYS = ("norm_ip.linear.weight", "norm_ip.linear.bias", "to_k_ip.weight", "to_v_ip.weight", "norm_q.weight",
              "norm_k.weight", "norm_ip_k.weight")


def rms_norm_heads(x: torch.Tensor, weight: torch.Tensor, eps: float = RMS_EPS) -> torch.Tensor:
    """RMS norm over each head's channels (statistics in at least fp32), times a per-channel weight.

    Args:
        x: Shape: (B, N, heads * head_dim).
        weight: Shape: (head_dim,).
    """
    b, n, inner = x.shape
    heads = x.view(b, n, -1, weight.shape[0]).to(torch.promote_types(x.dtype, torch.float32))
    variance = heads.pow(2).mean(-1, keepdim=True)
    normed = (heads * torch.rsqrt(variance + eps)).to(x.dtype) * weight.to(x.device, x.dtype)
    return normed.view(b, n, inner)


class _Weight(nn.Module):
    """A bare learned vector (the file's `norm_*.weight` keys)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class _AdaNorm(nn.Module):
    """Key `linear`: SiLU(temb) -> (shift, scale) for a non-affine LayerNorm of the image tokens."""

    def __init__(self, temb_dim: int, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(temb_dim, 2 * width)

    def forward(self, tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T, C); temb: (B, D). Returns (B, T, C)."""
        shift, scale = self.linear(F.silu(temb)).chunk(2, dim=1)
        normed = F.layer_norm(tokens, tokens.shape[-1:], eps=ADALN_EPS)
        return normed * (1 + scale[:, None]) + shift[:, None]


class JointLayer(nn.Module):
    """One block's adapter weights (keys as in `LAYER_KEYS`)."""

    def __init__(self, width: int, token_width: int, temb_dim: int, head_dim: int) -> None:
        super().__init__()
        self.norm_ip = _AdaNorm(temb_dim, token_width)
        self.to_k_ip = nn.Linear(token_width, width, bias=False)
        self.to_v_ip = nn.Linear(token_width, width, bias=False)
        self.norm_q, self.norm_k, self.norm_ip_k = _Weight(head_dim), _Weight(head_dim), _Weight(head_dim)

    def forward(self, tokens: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image keys and values for this block (run it with `placement.run_on`).

        Args:
            tokens: the resampler's tokens. Shape: (B, T, C).
            temb: its timestep embedding. Shape: (B, D).

        Returns:
            k, v. Shapes: (B, T, width).
        """
        ip = self.norm_ip(tokens, temb)
        return rms_norm_heads(self.to_k_ip(ip), self.norm_ip_k.weight), self.to_v_ip(ip)

    def attention(self, q_raw: torch.Tensor, k_raw: torch.Tensor, v: torch.Tensor, ip_k: torch.Tensor,
                  ip_v: torch.Tensor, heads: int, attention_fn: AttentionFn) -> torch.Tensor:
        """The unscaled image term: attention of the image stream over its own keys plus the adapter's.

        Args:
            q_raw, k_raw, v: the block's image-stream projections before its q/k norms. Shape: (B, L, width).
            ip_k, ip_v: from `image_kv`, one row per batch row. Shape: (B, T, width).

        Returns:
            Shape: (B, L, width), in q_raw's dtype.
        """
        dtype = q_raw.dtype
        q = rms_norm_heads(q_raw, self.norm_q.weight)
        k = torch.cat([rms_norm_heads(k_raw, self.norm_k.weight), ip_k.to(dtype)], dim=1)
        return attention_fn(q, k, torch.cat([v, ip_v.to(dtype)], dim=1), heads)


class JointLayerWeights(nn.ModuleDict):
    """`{"<i>": JointLayer}` for blocks 0..n-1; state-dict keys equal the file's `ip_adapter` keys."""

    @classmethod
    def from_state_dict(cls, sd: StateDict) -> JointLayerWeights:
        indices = sorted({int(key.split(".", 1)[0]) for key in sd})
        width, token_width = shape_of(sd, "0.to_k_ip.weight")
        temb_dim = shape_of(sd, "0.norm_ip.linear.weight")[1]
        head_dim = shape_of(sd, "0.norm_q.weight")[0]
        return cls({str(i): JointLayer(width, token_width, temb_dim, head_dim) for i in indices})

    @property
    def ip_indices(self) -> list[int]:
        """The block indices that carry adapter weights."""
        return [int(i) for i in self]

    def layer(self, index: int) -> JointLayer:
        return self[str(index)]

    def width(self, index: int) -> int:
        """Width of block `index` (rows of its to_k_ip)."""
        return self[str(index)].to_k_ip.out_features

    def head_dim(self, index: int) -> int:
        return self[str(index)].norm_q.weight.shape[0]
