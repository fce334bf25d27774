"""Image keys and values per layer: they depend only on the image tokens, so they are computed once (per device and
dtype) and reused by every step of every sampling run that uses the same Apply node's output."""

from __future__ import annotations

import torch

from .adapter import IPAdapter


class ImageKV:
    """Lazily computed `to_k_ip` / `to_v_ip` projections of one adapter's positive and negative tokens.

    Args:
        adapter: the loaded adapter.
        positive: tokens of the conditional rows. Shape: (1, T, C).
        negative: tokens of the unconditional rows. Shape: (1, T, C).
        tokens_per_image: tokens each reference image contributes (T = images * tokens_per_image); 0 if unknown.
    """

    def __init__(self, adapter: IPAdapter, positive: torch.Tensor, negative: torch.Tensor,
                 tokens_per_image: int = 0) -> None:
        self.adapter = adapter
        self.tokens = torch.cat([positive, negative], dim=0)
        self.tokens_per_image = tokens_per_image
        self._cache: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]

    def get(self, index: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of layer `index`, each of shape (2, T, width): row 0 positive, row 1 negative."""
        key = (index, torch.device(device), dtype)
        if key not in self._cache:
            with torch.no_grad():
                k, v = self.adapter.project_kv(index, self.tokens, dtype)
            self._cache[key] = (k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype))
        return self._cache[key]

    def keep_only(self, device: torch.device | str) -> None:
        """Drop cached K/V held on any other device (called when the model moves, e.g. on offload)."""
        device = torch.device(device)
        for key in [k for k in self._cache if k[1] != device]:
            del self._cache[key]

    def clear(self) -> None:
        """Drop every cached K/V."""
        self._cache.clear()
