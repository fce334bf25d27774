"""Image tokens of InstantX's SD3.5 adapter: its resampler depends on the timestep, so tokens are made once per
sampling step (for the positive and the negative images together) and shared by every block of that step."""

from __future__ import annotations

import torch

from ..adapter import IPAdapter
from ..placement import compute_dtype, run_on
from .time_resampler import TimeResampler


class TimedTokens:
    """Positive and negative tokens of one adapter at the current timestep, computed on demand and cached.

    They are computed where the adapter's weights are (the host loads them with the model), in the compute dtype for
    that device, the weights' dtype and the caller's.

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

    def get(self, timestep: float, wanted: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and timestep embedding at `timestep`; row 0 positive, row 1 negative.

        Args:
            wanted: the dtype the caller computes in (placement.compute_dtype takes the wider one).

        Returns:
            tokens: every image's tokens joined on the token axis. Shape: (2, N * Q, C).
            temb: Shape: (2, D).
        """
        device = self.adapter.device
        dtype = compute_dtype(device, self.adapter.dtype, wanted)
        key = (float(timestep), device, dtype)
        if self._key != key:
            with torch.no_grad():  # the timestep goes as a float: a half-precision tensor would round it
                tokens, temb = run_on(self.adapter.image_proj, device, dtype, self.features, float(timestep))
            n = self.num_images
            self._value = (tokens.reshape(2, n * tokens.shape[1], tokens.shape[2]), temb[::n])
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key, self._value = None, None
