"""What one sampling run decides once: each entry's sigma window (from the model sampling in force when sampling
starts, so a model-sampling patch placed after Apply counts) and each conditioning's role (by uuid). Per model call it
resolves the batch layout, each row's global frame, the row indices into the K/V tables and the masks and per-frame
weights once, and shares them across every patched layer."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from .call_state import CallState, PreparedTerm, query_counts
from .entry import AdapterEntry, SigmaWindow
from .frames import frame_sources, row_frames
from .masks import mask_for_queries
from .rows import BatchLayout, batch_layout
from .weight_types import LayerRule

#: transformer_options key under which a sampling run's plan reaches the patches.
RUN_PLAN_KEY = "ip_adapter_run_plan"


class RunPlan:
    """Decisions for one sampling run, plus caches for one model call, keyed by the identity of the per-call objects
    the host passes unchanged to every layer of that call (`cond_or_uncond`, `uuids`, the context window).

    Args:
        windows: the sigma window of every entry in the model; entries missing here use their fallback window.
        roles: uuid -> Role of every conditioning of the run (`rows.roles_by_uuid`).
    """

    def __init__(self, windows: Mapping[AdapterEntry, SigmaWindow] | None = None, roles: Mapping | None = None):
        self.windows = dict(windows or {})
        self.roles = dict(roles or {})
        self._sigma: tuple = (None, None)
        self._call: tuple = (None,) * 5
        self._layout: BatchLayout | None = None
        self._frames: tuple[int, ...] | None = None
        self._index: dict[tuple, torch.Tensor] = {}
        self._scales: dict[tuple, torch.Tensor] = {}
        self._per_query: dict[tuple, torch.Tensor] = {}

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
        """The call's batch layout; a new call (new per-call objects) also empties the per-call caches."""
        chunks, uuids = extra.get("cond_or_uncond"), extra.get("uuids")
        window, ad_params = frame_sources(extra)
        c = self._call
        if (self._layout is None or c[0] is not chunks or c[1] is not uuids or c[2] is not window
                or c[3] is not ad_params or c[4] != batch):
            self._layout = batch_layout(batch, chunks, uuids, self.roles)
            self._call = (chunks, uuids, window, ad_params, batch)
            self._frames = None
            self._index.clear()
            self._scales.clear()
        return self._layout

    def frames(self, extra: dict, layout: BatchLayout) -> tuple[int, ...]:
        """The global frame of each row of a chunk in this call (`frames.row_frames`)."""
        if self._frames is None:
            self._frames = row_frames(extra, layout.rows_per_chunk)
        return self._frames

    def row_index(self, extra: dict, batch: int, device: torch.device, counts: tuple[int, int] = (1, 1)
                  ) -> torch.Tensor:
        """Each row's index into a table with `counts` rows per role (LayerTable.counts). Shape: (B,)."""
        layout = self.layout(extra, batch)
        key = (counts, device)
        index = self._index.get(key)
        if index is None:
            if counts == (1, 1):  # one image for every frame: the row's role alone decides
                index = layout.row_index(device)
            else:
                index = layout.frame_row_index(self.frames(extra, layout), counts, device)
            self._index[key] = index
        return index

    def scale(self, entry: AdapterEntry, extra: dict, batch: int, num_queries: int, latent_hw: tuple[int, int],
              device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """What multiplies the entry's image term on every row: its mask (one value per query) times its per-frame
        row weight, each taken at the row's global frame. Shape: (B, Nq or 1, 1), or None."""
        if entry.mask is None and entry.row_weights is None:
            return None
        layout = self.layout(extra, batch)
        key = (entry, num_queries, device, dtype)
        scale = self._scales.get(key)
        if scale is None:
            frames = torch.tensor(self.frames(extra, layout), dtype=torch.long)
            scale = torch.ones(frames.numel(), 1, 1, dtype=torch.float64)
            if entry.mask is not None:
                per_query = self._mask_per_query(entry, num_queries, latent_hw)
                scale = per_query[frames.clamp(max=per_query.shape[0] - 1)]
            if entry.row_weights is not None:
                weights = entry.row_weights
                scale = scale * weights[frames.clamp(max=weights.numel() - 1)].view(-1, 1, 1)
            scale = self._scales[key] = scale.repeat(len(layout.chunk_roles), 1, 1).to(device, dtype)
        return scale

    def _mask_per_query(self, entry: AdapterEntry, num_queries: int, latent_hw: tuple) -> torch.Tensor:
        """The entry's masks at one layer's grid, for the whole run. Shape: (M, Nq, 1), float32."""
        key = (entry, num_queries, latent_hw)
        per_query = self._per_query.get(key)
        if per_query is None:
            per_query = self._per_query[key] = mask_for_queries(entry.mask, num_queries, latent_hw)
        return per_query

    def call_state(self, patches: Iterable, extra: dict, batch: int, latent_hw: tuple[int, int],
                   device: torch.device, dtype: torch.dtype, num_queries: tuple[int, ...] | None = None,
                   gated: bool = False) -> CallState:
        """Everything `patches` (Attn2Patch objects) need in one model call (call_state.py).

        Args:
            extra: the call's transformer options (cond_or_uncond, uuids, sigmas, context window).
            batch, latent_hw: rows of the call and the latent's (H, W).
            device, dtype: where and in what the UNet computes its attention.
            num_queries: the grids to prepare scales for (default: every UNet level of `latent_hw`).
            gated: keep entries outside their window with a zero scale (torch.compile) instead of dropping them.
        """
        counts = query_counts(latent_hw) if num_queries is None else num_queries
        layers = {}
        for patch in patches:
            prepared = (self.prepare(patch.index, c.entry, c.rule, extra, batch, latent_hw, counts, device, dtype,
                                     gated) for c in patch.contributions)
            layers[patch.state_key] = tuple(p for p in prepared if p is not None)
        return CallState(layers, batch, torch.device(device), dtype)

    def prepare(self, index: int, entry: AdapterEntry, rule: LayerRule, extra: dict, batch: int,
                latent_hw: tuple[int, int], num_queries: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                gated: bool) -> PreparedTerm | None:
        """`entry`'s term at layer `index` for this call, or None when it adds nothing."""
        if entry.weight * rule.factor == 0:
            return None
        active = self.active(entry, extra)
        if not (active or gated):
            return None
        table = entry.table(index, rule, device, dtype)
        rows = self.row_index(extra, batch, device, table.counts)
        scales = {n: self.scale(entry, extra, batch, n, latent_hw, device, dtype) for n in num_queries}
        if gated:
            gate = torch.full((1, 1, 1), float(active), device=device, dtype=dtype)
            scales = {n: gate if s is None else s * gate for n, s in scales.items()}
        elif entry.mask is None and entry.row_weights is None:
            scales = None
        return PreparedTerm(entry, rule, table.k, table.v, table.out_weight, rows, scales)


def plan_of(extra: dict) -> RunPlan:
    """The run's plan, or a fresh one for a model call made outside a sampling run (fallback windows, index rule)."""
    plan = extra.get(RUN_PLAN_KEY)
    return plan if plan is not None else RunPlan()
