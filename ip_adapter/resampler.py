"""Perceiver resampler of the Plus adapters (and, without learned latents, of FaceID Plus).

Learned (or given) query tokens attend to the CLIP hidden states concatenated with themselves, `depth` times, each
attention followed by a feed-forward block, both residual (arXiv 2308.06721, "IP-Adapter-Plus").
"""

from __future__ import annotations

import torch
from torch import nn

from .statedict import StateDict, count_prefixed, shape_of

#: Every official Plus checkpoint uses 64-dim heads; the head count is not stored, only inner = heads * 64.
RESAMPLER_HEAD_DIM = 64
FEED_FORWARD_MULT = 4


class PerceiverAttention(nn.Module):
    """Latents attend to `cat(x, latents)`; keys and values come from one fused `to_kv` projection."""

    def __init__(self, dim: int, heads: int, head_dim: int = RESAMPLER_HEAD_DIM) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x: (B, Nx, D) image features; latents: (B, Nl, D). Returns (B, Nl, D)."""
        return self.attend(self.norm1(x), self.norm2(latents))

    def attend(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The attention of already normalised `x` (B, Nx, D) and `latents` (B, Nl, D). Returns (B, Nl, D)."""
        q = self._split(self.to_q(latents))
        k, v = (self._split(t) for t in self.to_kv(torch.cat((x, latents), dim=1)).chunk(2, dim=-1))
        # Scaling q and k by dh^-1/4 each (instead of the product by dh^-1/2) keeps fp16 logits in range; the
        # softmax itself runs in fp32 for the same reason.
        scale = self.head_dim**-0.25
        logits = (q * scale) @ (k * scale).transpose(-2, -1)
        weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
        out = (weights @ v).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.to_out(out)


def feed_forward(dim: int, mult: int = FEED_FORWARD_MULT) -> nn.Sequential:
    """LayerNorm -> Linear(D, mult*D) -> GELU -> Linear(mult*D, D), both linears bias-free (keys .0/.1/.3)."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class Resampler(nn.Module):
    """Perceiver resampler: (B, T, E) CLIP hidden states -> (B, Q, C) tokens.

    With `num_queries=0` it has no learned latents and the queries are passed to `forward` (FaceID Plus).
    """

    def __init__(
        self, dim: int, depth: int, heads: int, num_queries: int, embedding_dim: int, output_dim: int
    ) -> None:
        super().__init__()
        if num_queries:
            self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads), feed_forward(dim)]) for _ in range(depth)
        )

    @classmethod
    def from_state_dict(cls, sd: StateDict) -> Resampler:
        """Infer every dimension from the tensor shapes (heads = inner / 64, see RESAMPLER_HEAD_DIM)."""
        dim = shape_of(sd, "proj_in.weight")[0]
        return cls(
            dim=dim,
            depth=count_prefixed(sd, "layers.", ".0.to_q.weight"),
            heads=shape_of(sd, "layers.0.0.to_q.weight")[0] // RESAMPLER_HEAD_DIM,
            num_queries=shape_of(sd, "latents")[1] if "latents" in sd else 0,
            embedding_dim=shape_of(sd, "proj_in.weight")[1],
            output_dim=shape_of(sd, "proj_out.weight")[0],
        )

    @property
    def num_queries(self) -> int:
        return self.latents.shape[1] if hasattr(self, "latents") else 0

    def forward(self, x: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, E); latents: (B, Q, D) when the module has none of its own. Returns (B, Q, C)."""
        if latents is None:
            latents = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for attention, ff in self.layers:
            latents = attention(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
