"""InstantX's SD3.5-Large image projection: a perceiver resampler whose every block is modulated by the timestep.

SigLIP hidden states (B, T, E) and a timestep t (the transformer's, sigma * 1000) give 64 image tokens and the
timestep embedding that the per-block adapter layers reuse (`joint.py`). Math as published with the adapter and in
diffusers' `IPAdapterTimeImageProjection`: `x = proj_in(f) + temb(t)`; per block the latents are adaLN-modulated
(shift/scale from temb) before attending to `cat(LN(x), latents)`, then go through an adaLN-modulated feed-forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..resampler import PerceiverAttention, feed_forward
from ..statedict import StateDict, count_prefixed, shape_of

#: The released resampler uses 64-wide heads; only heads * 64 is stored.
HEAD_DIM = 64
#: adaLN chunks per block: shift/scale for the attention input, shift/scale for the feed-forward input.
ADALN_CHUNKS = 4
MAX_PERIOD = 10000


def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal timestep features, cosines first (`flip_sin_to_cos`), frequencies exp(-ln(1e4) * i / (dim/2)).

    Args:
        t: timesteps (fractional allowed). Shape: (B,).

    Returns:
        Shape: (B, dim), float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear on the sinusoid (keys `linear_1`, `linear_2`)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,). Returns (B, dim) in the layers' dtype."""
        features = timestep_sinusoid(t, self.linear_1.in_features).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(features)))


class TimeAttention(PerceiverAttention):
    """The Plus resampler's attention (same keys) with adaLN on the latents: `norm2(latents) * (1 + scale) + shift`
    from the timestep."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim, heads, HEAD_DIM)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
                ) -> torch.Tensor:
        """x: (B, Nx, D); latents: (B, Nl, D); shift, scale: (B, D). Returns (B, Nl, D), before the residual."""
        return self.attend(self.norm1(x), self.norm2(latents) * (1 + scale[:, None]) + shift[:, None])


class TimeBlock(nn.ModuleList):
    """One resampler block, children numbered as on disk: `0` attention, `1` feed-forward (LN, Linear, GELU,
    Linear), `2` adaLN (SiLU, Linear giving shift/scale for the attention and for the feed-forward)."""

    def __init__(self, dim: int, heads: int) -> None:
        adaln = nn.Sequential(nn.SiLU(), nn.Linear(dim, ADALN_CHUNKS * dim))
        super().__init__([TimeAttention(dim, heads), feed_forward(dim), adaln])

    def forward(self, x: torch.Tensor, latents: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x: (B, Nx, D); latents: (B, Nl, D); temb: (B, D). Returns (B, Nl, D)."""
        attention, (norm, up, act, down), adaln = self
        shift_attn, scale_attn, shift_ff, scale_ff = adaln(temb).chunk(ADALN_CHUNKS, dim=1)
        latents = attention(x, latents, shift_attn, scale_attn) + latents
        hidden = norm(latents) * (1 + scale_ff[:, None]) + shift_ff[:, None]
        return down(act(up(hidden))) + latents


class TimeResampler(nn.Module):
    """(B, T, E) encoder hidden states + (B,) timesteps -> (B, Q, C) image tokens and the (B, D) timestep embedding."""

    def __init__(self, dim: int, depth: int, heads: int, num_queries: int, embedding_dim: int, output_dim: int,
                 timestep_dim: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.time_embedding = TimestepEmbedding(timestep_dim, dim)
        self.layers = nn.ModuleList(TimeBlock(dim, heads) for _ in range(depth))

    @classmethod
    def from_state_dict(cls, sd: StateDict) -> TimeResampler:
        """Every size from the tensor shapes (heads = to_q rows / 64)."""
        dim, embedding_dim = shape_of(sd, "proj_in.weight")
        return cls(dim=dim, depth=count_prefixed(sd, "layers.", ".0.to_q.weight"),
                   heads=shape_of(sd, "layers.0.0.to_q.weight")[0] // HEAD_DIM, num_queries=shape_of(sd, "latents")[1],
                   embedding_dim=embedding_dim, output_dim=shape_of(sd, "proj_out.weight")[0],
                   timestep_dim=shape_of(sd, "time_embedding.linear_1.weight")[1])

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, E); timestep: (B,) or one value for every row (kept in float32 whatever the weights' dtype).
        Returns tokens (B, Q, C) and the timestep embedding (B, D)."""
        if not isinstance(timestep, torch.Tensor):
            timestep = torch.full((x.shape[0],), float(timestep), device=x.device)
        temb = self.time_embedding(timestep)
        x = self.proj_in(x) + temb[:, None]
        latents = self.latents.expand(x.shape[0], -1, -1)
        for block in self.layers:
            latents = block(x, latents, temb)
        return self.norm_out(self.proj_out(latents)), temb
