"""Image tokens of InstantX's SD3.5 adapter: its resampler depends on the timestep, so tokens are made once per
sampling step (for the positive and the negative images together) and shared by every block of that step."""

from __future__ import annotations

import torch

from ..adapter import IPAdapter
from .time_resampler import TimeResampler


class TimedTokens:
    """Positive and negative tokens of one adapter at the current timestep, computed on demand and cached.

    Args:
        adapter: an adapter whose `image_proj` is a TimeResampler.
        positive: encoder hidden states of the reference images. Shape: (N, T, E).
        negative: the matching negative hidden states. Shape: (N, T, E).
    """

    def __init__(self, adapter: IPAdapter, positive: torch.Tensor, negative: torch.Tensor) -> None:
        if not isinstance(adapter.image_proj, TimeResampler):
            raise TypeError(f"'{adapter.name}' has no timestep-aware resampler")
        self.adapter = adapter
        self.features = torch.cat([positive, negative], dim=0)
        self.num_images = positive.shape[0]
        self._key: tuple | None = None
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, timestep: float, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and timestep embedding at `timestep`; row 0 positive, row 1 negative.

        Returns:
            tokens: every image's tokens joined on the token axis. Shape: (2, N * Q, C).
            temb: Shape: (2, D).
        """
        key = (float(timestep), torch.device(device), dtype)
        if self._key != key:
            proj = self.adapter.image_proj
            weight = proj.proj_in.weight
            with torch.no_grad():
                t = torch.full((self.features.shape[0],), float(timestep), device=weight.device)
                tokens, temb = proj(self.features.to(weight.device, weight.dtype), t)
            n = self.num_images
            tokens = tokens.reshape(2, n * tokens.shape[1], tokens.shape[2])
            self._value = (tokens.to(device, dtype), temb[::n].to(device, dtype))
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key, self._value = None, None
