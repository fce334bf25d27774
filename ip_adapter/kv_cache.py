"""Image keys and values per layer: they depend only on the image tokens, so they are computed once and reused by
every step of every sampling run that uses the same Apply node's output.

Apply computes them for every layer it patches (`ImageKV.precompute`) into a KVTables module: frozen parameters the
host's model management loads, offloads and counts with the model, like any model weight. Sampling then needs
neither the adapter's weights nor any computation to start. A layer asked for another device or dtype (or without
precomputed tables) gets a cast or computed copy, cached per device and dtype.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .adapter import IPAdapter


class KVTables(nn.Module):
    """Every precomputed layer's image K and V, as frozen parameters (so the host moves and counts them).

    Args:
        tables: layer checkpoint index -> (K, V), each of shape (P + Q, T, width).
    """

    def __init__(self, tables: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.k = nn.ParameterDict({str(i): nn.Parameter(k, requires_grad=False) for i, (k, _) in tables.items()})
        self.v = nn.ParameterDict({str(i): nn.Parameter(v, requires_grad=False) for i, (_, v) in tables.items()})

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        key = str(index)
        return (self.k[key], self.v[key]) if key in self.k else None


class ImageKV:
    """Lazily computed `to_k_ip` / `to_v_ip` projections of one adapter's positive and negative tokens.

    Args:
        adapter: the loaded adapter.
        positive: tokens of the conditional rows: one row for every frame, or one row per frame (frame i attends to
            row min(i, P - 1)). Shape: (P, T, C).
        negative: tokens of the unconditional rows, in the same way. Shape: (Q, T, C).
        tokens_per_image: tokens each reference image contributes (T = images * tokens_per_image); 0 if unknown.
    """

    def __init__(self, adapter: IPAdapter, positive: torch.Tensor, negative: torch.Tensor,
                 tokens_per_image: int = 0) -> None:
        self.adapter = adapter
        self.tokens = torch.cat([positive, negative], dim=0)
        self.counts = (positive.shape[0], negative.shape[0])
        self.tokens_per_image = tokens_per_image
        self.tables: KVTables | None = None
        self._cache: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]

    def precompute(self, indices: Iterable[int], dtype: torch.dtype, device: torch.device | str) -> KVTables:
        """Compute the K/V of every layer in `indices` now (where the adapter is), in `dtype`, stored on `device`;
        the returned module is what the host manages from then on."""
        with torch.no_grad():
            tables = {i: tuple(t.to(device=device, dtype=dtype) for t in self.adapter.project_kv(i, self.tokens, dtype))
                      for i in indices}
        self.tables = KVTables(tables)
        return self.tables

    def get(self, index: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of layer `index`, each of shape (P + Q, T, width): the P positive rows, then the Q negative."""
        device = torch.device(device)
        stored = None if self.tables is None else self.tables.get(index)
        if stored is not None and stored[0].device == device and stored[0].dtype == dtype:
            return stored  # where the host put them: no copy
        key = (index, device, dtype)
        if key not in self._cache:
            with torch.no_grad():
                k, v = stored if stored is not None else self.adapter.project_kv(index, self.tokens, dtype)
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
