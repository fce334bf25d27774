"""What one sampling run decides once: each entry's sigma window (from the model sampling in force when sampling
starts, so a model-sampling patch placed after Apply counts) and each conditioning's role (by uuid). Per model call it
resolves the batch layout, the active entries and the masks once and shares them across every patched layer."""

from __future__ import annotations

from typing import Mapping

import torch

from .attention import ImageTerm
from .encoding import fit_images
from .entry import AdapterEntry, SigmaWindow
from .masks import mask_for_queries
from .rows import BatchLayout, batch_layout
from .weight_types import LayerRule

#: transformer_options key under which a sampling run's plan reaches the patches.
RUN_PLAN_KEY = "ip_adapter_run_plan"


class RunPlan:
    """Decisions for one sampling run, plus one-slot caches keyed by the identity of the per-call objects the host
    passes unchanged to every layer of one model call (`sigmas`, `uuids`, `cond_or_uncond`).

    Args:
        windows: the sigma window of every entry in the model; entries missing here use their fallback window.
        roles: uuid -> Role of every conditioning of the run (`rows.roles_by_uuid`).
    """

    def __init__(self, windows: Mapping[AdapterEntry, SigmaWindow] | None = None, roles: Mapping | None = None):
        self.windows = dict(windows or {})
        self.roles = dict(roles or {})
        self._sigma: tuple = (None, None)
        self._layout: tuple = (None, None, None, None)
        self._index: dict[torch.device, torch.Tensor] = {}
        self._masks: dict[tuple, torch.Tensor] = {}

    def sigma(self, extra: dict) -> float | None:
        """The current step's sigma (one device sync per model call), or None outside a sampler."""
        sigmas = extra.get("sigmas")
        if sigmas is None:
            return None
        if self._sigma[0] is not sigmas:
            self._sigma = (sigmas, float(sigmas.flatten()[0]))
        return self._sigma[1]

    def active(self, entry: AdapterEntry, extra: dict) -> bool:
        sigma = self.sigma(extra)
        return sigma is None or self.windows.get(entry, entry.fallback_window).contains(sigma)

    def layout(self, extra: dict, batch: int) -> BatchLayout:
        chunks, uuids = extra.get("cond_or_uncond"), extra.get("uuids")
        cached_chunks, cached_uuids, cached_batch, layout = self._layout
        if cached_chunks is not chunks or cached_uuids is not uuids or cached_batch != batch:
            layout = batch_layout(batch, chunks, uuids, self.roles)
            self._layout = (chunks, uuids, batch, layout)
            self._index.clear()
        return layout

    def row_index(self, extra: dict, q: torch.Tensor) -> torch.Tensor:
        layout = self.layout(extra, q.shape[0])
        index = self._index.get(q.device)
        if index is None:
            index = self._index[q.device] = layout.row_index(q.device)
        return index

    def mask(self, entry: AdapterEntry, q: torch.Tensor, extra: dict) -> torch.Tensor | None:
        """The entry's mask, one value per query of this layer for every row. Shape: (B, Nq, 1)."""
        if entry.mask is None:
            return None
        layout = self.layout(extra, q.shape[0])
        hw = tuple(extra["original_shape"][-2:])
        key = (entry, q.shape[1], hw, layout, q.device, q.dtype)
        mask = self._masks.get(key)
        if mask is None:
            per_query = fit_images(mask_for_queries(entry.mask, q.shape[1], hw), layout.rows_per_chunk)
            mask = self._masks[key] = per_query.repeat(len(layout.chunk_roles), 1, 1).to(q.device, q.dtype)
        return mask

    def term(self, index: int, entry: AdapterEntry, rule: LayerRule, q: torch.Tensor, extra: dict
             ) -> ImageTerm | None:
        """`entry`'s image term at layer `index` for this batch, or None when it adds nothing."""
        if entry.weight * rule.factor == 0 or not self.active(entry, extra):
            return None
        table = entry.table(index, rule, q.device, q.dtype)
        rows = self.row_index(extra, q)
        return ImageTerm(table.k.index_select(0, rows), table.v.index_select(0, rows), table.out_weight,
                         self.mask(entry, q, extra))


def plan_of(extra: dict) -> RunPlan:
    """The run's plan, or a fresh one for a model call made outside a sampling run (fallback windows, index rule)."""
    plan = extra.get(RUN_PLAN_KEY)
    return plan if plan is not None else RunPlan()
