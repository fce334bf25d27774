"""One Apply IP-Adapter node's contribution to a DiT: per-block weights, the sigma window, the mask, and the image
keys/values (XLabs: once per run) or tokens (InstantX: once per step), laid out per batch row.

Rows: the host batches chunks listed in `transformer_options["cond_or_uncond"]`; conditional chunks get the positive
images, unconditional chunks the negative ones, as on the UNet path (never a mean over the batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ...ip_adapter import ImageKV, mask_for_queries, rows_for_chunks
from ...ip_adapter.dit.tokens import TimedTokens
from ...ip_adapter.encoding import fit_images
from ..loaded import LoadedAdapter

#: What the host passes when no sigma is known (a direct model call): treated as inside every window.
NO_SIGMA = None


@dataclass(frozen=True)
class Rows:
    """The batch layout of one model call: chunk kinds (`cond_or_uncond`) and rows per chunk."""

    chunks: tuple[int, ...]
    per_chunk: int

    @classmethod
    def of(cls, to: dict, batch: int) -> Rows:
        """Without the sampler's `cond_or_uncond` (a direct call), every row is conditional."""
        chunks = tuple(to.get("cond_or_uncond") or ())
        if not chunks or batch % len(chunks):
            chunks = (0,)
        return cls(chunks, batch // len(chunks))

    def expand(self, pair: torch.Tensor) -> torch.Tensor:
        """(2, ...) positive/negative -> one entry per batch row (B, ...)."""
        flat = pair.reshape(2, 1, -1)
        out = rows_for_chunks(flat[:1], flat[1:], list(self.chunks), self.per_chunk)
        return out.reshape(out.shape[0], *pair.shape[1:])


@dataclass(eq=False)
class DiTEntry:
    """Shared by every block patch one Apply node registered.

    Attributes:
        loaded: the adapter and its host ModelPatcher.
        factors: weight * curve for each block (0 = this block is left alone).
        sigma_start, sigma_end: the start_at..end_at window in sigmas.
        mask: where the image prompt acts, (M, H, W) in 0..1 in the latent's aspect; None = everywhere.
        kv: XLabs: positive/negative image keys and values per block, made once per run.
        timed: InstantX: positive/negative tokens made once per step.
        timestep: the model's sigma -> timestep map (InstantX's resampler takes the transformer's timestep).
    """

    loaded: LoadedAdapter
    factors: tuple[float, ...]
    sigma_start: float
    sigma_end: float
    mask: torch.Tensor | None
    kv: ImageKV | None = None
    timed: TimedTokens | None = None
    timestep: Callable[[torch.Tensor], torch.Tensor] | None = None
    _window: tuple = field(default=(None, None), repr=False)  # (sigmas tensor of the current step, its value)
    _mask_cache: dict = field(default_factory=dict, repr=False)

    def weight(self, index: int, to: dict) -> float:
        """This entry's weight at block `index` for the current call (0 outside the window)."""
        factor = self.factors[index]
        if factor == 0:
            return 0.0
        sigma = self._sigma(to)
        return factor if sigma is None or self.sigma_end <= sigma <= self.sigma_start else 0.0

    def _sigma(self, to: dict) -> float | None:
        # Every block of a step sees the same sigmas tensor: read it (a device sync) once per step, not per block.
        sigmas = to.get("sigmas")
        if sigmas is NO_SIGMA:
            return None
        if self._window[0] is not sigmas:
            self._window = (sigmas, float(sigmas.flatten()[0]))
        return self._window[1]

    def image_kv(self, index: int, rows: Rows, device: torch.device, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """XLabs: K and V of block `index` per batch row. Shapes: (B, T, width)."""
        k, v = self.kv.get(index, device, dtype)
        return rows.expand(k), rows.expand(v)

    def tokens(self, to: dict, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """InstantX: positive/negative tokens (2, T, C) and timestep embeddings (2, D) at this call's timestep."""
        sigma = self._sigma(to)
        t = self.timestep(torch.tensor([1.0 if sigma is None else sigma]))
        return self.timed.get(float(t[0]), device, dtype)

    def row_mask(self, rows: Rows, num_tokens: int, grid: tuple[int, tuple[int, int]] | None,
                 like: torch.Tensor) -> torch.Tensor | None:
        """The mask per row and image token, (B, L, 1), or None.

        Args:
            num_tokens: image tokens in the block (L; reference latents appended by Kontext count too).
            grid: (generated image tokens, latent (h, w)) of this call, None if unknown (then L is the grid).
        """
        if self.mask is None:
            return None
        image_tokens, latent_hw = grid if grid is not None else (num_tokens, tuple(self.mask.shape[-2:]))
        key = (num_tokens, image_tokens, latent_hw, rows, like.device, like.dtype)
        if key not in self._mask_cache:
            per_token = mask_for_queries(self.mask, image_tokens, latent_hw)
            # Tokens beyond the generated image (reference latents) get no image prompt.
            per_token = torch.nn.functional.pad(per_token, (0, 0, 0, num_tokens - image_tokens))
            per_row = fit_images(per_token, rows.per_chunk).repeat(len(rows.chunks), 1, 1)
            self._mask_cache[key] = per_row.to(like.device, like.dtype)
        return self._mask_cache[key]

    def keep_only(self, device: torch.device | str) -> None:
        """Drop caches held on other devices (the model moved, e.g. it was offloaded)."""
        if self.kv is not None:
            self.kv.keep_only(device)
        if self.timed is not None:
            self.timed.clear()
        self._mask_cache.clear()
