"""One Apply node's contribution to a DiT: per-block weights, the sampling window, the mask, and the image keys/values
(XLabs: once per run) or tokens (InstantX: once per step), laid out per batch row by the run plan.

Rows follow the run plan's roles (`rows.py`): conditional rows get the reference images, unconditional rows the
negative ones, as on the UNet path (never a mean over the batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..adapter import IPAdapter
from ..encoding import fit_images
from ..entry import PercentToSigma, SigmaWindow, check_window
from ..kv_cache import ImageKV
from ..masks import mask_for_queries
from ..rows import BatchLayout
from ..run_plan import RunPlan
from .tokens import TimedTokens

#: ModelSampling.timestep: sigmas -> the timesteps the transformer sees.
SigmaToTimestep = Callable[[torch.Tensor], torch.Tensor]
#: (generated-image tokens, latent (h, w)) of a model call, or None when unknown.
TokenGrid = tuple[int, tuple[int, int]] | None


@dataclass(eq=False)
class DiTEntry:
    """Shared by every block patch one Apply node registered, and by every clone of the patched model.

    Attributes:
        adapter: the loaded adapter.
        factors: weight * curve for each block (0 = this entry adds nothing there).
        start_at, end_at: the sampling window as fractions; turned into sigmas when sampling starts (run plan).
        mask: where the image prompt acts, (M, H, W) in 0..1 in the latent's aspect; None = everywhere.
        fallback_window: the window from the model sampling at apply time, for calls outside a sampling run.
        owners: host objects to load and offload with the model (opaque here).
        kv: XLabs: positive/negative image keys and values per block, made once.
        timed: InstantX: positive/negative tokens made once per step.
        timestep: InstantX: the model's sigma -> timestep map (its resampler takes the transformer's timestep).
    """

    adapter: IPAdapter
    factors: tuple[float, ...]
    start_at: float
    end_at: float
    mask: torch.Tensor | None = None
    fallback_window: SigmaWindow = SigmaWindow(float("inf"), 0.0)
    owners: tuple = ()
    kv: ImageKV | None = None
    timed: TimedTokens | None = None
    timestep: SigmaToTimestep | None = None
    _masks: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_window(self.start_at, self.end_at)

    def window(self, percent_to_sigma: PercentToSigma) -> SigmaWindow:
        return SigmaWindow.of(percent_to_sigma, self.start_at, self.end_at)

    def weight(self, index: int, plan: RunPlan, to: dict) -> float:
        """This entry's weight at block `index` in the current call (0 outside the window)."""
        factor = self.factors[index]
        return factor if factor != 0 and plan.active(self, to) else 0.0

    def image_kv(self, index: int, rows: torch.Tensor, device: torch.device, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """XLabs: K and V of block `index` for each batch row (`rows`: each row's 0/1 role). Shapes: (B, T, width)."""
        k, v = self.kv.get(index, device, dtype)
        return k.index_select(0, rows), v.index_select(0, rows)

    def tokens(self, plan: RunPlan, to: dict, wanted: torch.dtype | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """InstantX: positive/negative tokens (2, T, C) and timestep embeddings (2, D) at this call's timestep, where
        the adapter is loaded (`wanted`: the caller's dtype)."""
        sigma = plan.sigma(to)
        t = self.timestep(torch.tensor([1.0 if sigma is None else sigma]))
        return self.timed.get(float(t[0]), wanted)

    def row_mask(self, layout: BatchLayout, num_tokens: int, grid: TokenGrid, like: torch.Tensor
                 ) -> torch.Tensor | None:
        """The mask per row and image token, (B, L, 1), or None.

        Args:
            num_tokens: image tokens in the block (L; reference latents appended by Kontext count too, and get 0).
            grid: tokens of the generated image and the latent size; None: all L tokens form the image.
        """
        if self.mask is None:
            return None
        image_tokens, latent_hw = grid if grid is not None else (num_tokens, tuple(self.mask.shape[-2:]))
        key = (num_tokens, image_tokens, latent_hw, layout, like.device, like.dtype)
        if key not in self._masks:
            per_token = mask_for_queries(self.mask, image_tokens, latent_hw)
            per_token = F.pad(per_token, (0, 0, 0, num_tokens - image_tokens))
            per_row = fit_images(per_token, layout.rows_per_chunk).repeat(len(layout.chunk_roles), 1, 1)
            self._masks[key] = per_row.to(like.device, like.dtype)
        return self._masks[key]

    def keep_only(self, device: torch.device | str) -> None:
        """Drop caches held on other devices (the model moved, e.g. it was offloaded)."""
        if self.kv is not None:
            self.kv.keep_only(device)
        if self.timed is not None:
            self.timed.clear()
        self._masks.clear()
