"""Image projection models: CLIP (or face-ID) features -> image prompt tokens in the UNet's context space.

Formulas are those of the official IP-Adapter release (LayerNorm eps 1e-5, exact GELU); `Resampler` (Plus) lives in
`resampler.py`. Every class infers its dimensions from a state dict with `from_state_dict`.
"""

from __future__ import annotations

import torch
from torch import nn

from .resampler import Resampler
from .statedict import StateDict, shape_of, sub_dict


class ImageProjModel(nn.Module):
    """Base / light / vit-G: pooled `image_embeds` (B, E) -> `LN(reshape(W e + b))` (B, N, C)."""

    def __init__(self, cross_attention_dim: int, embedding_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens, self.cross_attention_dim = num_tokens, cross_attention_dim
        self.proj = nn.Linear(embedding_dim, num_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    @classmethod
    def from_state_dict(cls, sd: StateDict) -> ImageProjModel:
        rows, embedding_dim = shape_of(sd, "proj.weight")
        cross = shape_of(sd, "norm.weight")[0]
        return cls(cross, embedding_dim, rows // cross)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """image_embeds: (B, E). Returns (B, N, C)."""
        tokens = self.proj(image_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(tokens)


class MLPProjModel(nn.Module):
    """Full face: every CLIP hidden token through `LN(W2 GELU(W1 h + b1) + b2)`; (B, T, E) -> (B, T, C)."""

    def __init__(self, cross_attention_dim: int, embedding_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim),
            nn.GELU(),
            nn.Linear(embedding_dim, cross_attention_dim),
            nn.LayerNorm(cross_attention_dim),
        )

    @classmethod
    def from_state_dict(cls, sd: StateDict) -> MLPProjModel:
        return cls(shape_of(sd, "proj.2.weight")[0], shape_of(sd, "proj.0.weight")[1])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (B, T, E). Returns (B, T, C)."""
        return self.proj(hidden_states)


def _id_mlp(id_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(id_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class FaceIDProjModel(nn.Module):
    """FaceID and FaceID portrait: ArcFace embedding (B, [n,] 512) -> `LN(reshape(MLP(id)))` (B, n*N, C).

    Portrait models take several faces per sample; each face yields N tokens and they are concatenated.
    """

    def __init__(self, cross_attention_dim: int, id_dim: int, hidden_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens, self.cross_attention_dim = num_tokens, cross_attention_dim
        self.proj = _id_mlp(id_dim, hidden_dim, num_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    @classmethod
    def from_state_dict(cls, sd: StateDict) -> FaceIDProjModel:
        hidden_dim, id_dim = shape_of(sd, "proj.0.weight")
        cross = shape_of(sd, "norm.weight")[0]
        return cls(cross, id_dim, hidden_dim, shape_of(sd, "proj.2.weight")[0] // cross)

    def forward(self, id_embeds: torch.Tensor) -> torch.Tensor:
        """id_embeds: (B, 512) or (B, n, 512). Returns (B, n*N, C)."""
        batch = id_embeds.shape[0]
        tokens = self.proj(id_embeds).reshape(batch, -1, self.num_tokens, self.cross_attention_dim)
        return self.norm(tokens).reshape(batch, -1, self.cross_attention_dim)


class ProjPlusModel(nn.Module):
    """FaceID Plus / PlusV2: ID tokens refined by a latent-free resampler over CLIP hidden states.

    `out = R(x, h)` (v1) or `x + s_scale * R(x, h)` (v2, `shortcut=True`), with `x = LN(reshape(MLP(id)))`.
    """

    def __init__(self, id_proj: FaceIDProjModel, perceiver_resampler: Resampler) -> None:
        super().__init__()
        self.num_tokens, self.cross_attention_dim = id_proj.num_tokens, id_proj.cross_attention_dim
        self.proj, self.norm = id_proj.proj, id_proj.norm
        self.perceiver_resampler = perceiver_resampler

    @classmethod
    def from_state_dict(cls, sd: StateDict) -> ProjPlusModel:
        return cls(FaceIDProjModel.from_state_dict(sd), Resampler.from_state_dict(sub_dict(sd, "perceiver_resampler.")))

    def forward(
        self, id_embeds: torch.Tensor, hidden_states: torch.Tensor, shortcut: bool = False, s_scale: float = 1.0
    ) -> torch.Tensor:
        """id_embeds: (B, 512); hidden_states: (B, T, E). Returns (B, N, C)."""
        x = self.norm(self.proj(id_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim))
        out = self.perceiver_resampler(hidden_states, latents=x)
        return x + s_scale * out if shortcut else out
