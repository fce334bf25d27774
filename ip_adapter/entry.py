"""One Apply node's contribution: the adapter, its image K/V, weight, sampling window, scaling mode and mask, and the
per-layer K/V tables built from them once per device and dtype (never per step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .adapter import IPAdapter
from .errors import InvalidOptionError
from .kv_cache import ImageKV
from .scaling import NO_KV_SCALING, check_embeds_scaling, scale_embeds
from .weight_types import LayerRule

#: ModelSampling.percent_to_sigma: a fraction of sampling (0 = first step) -> the sigma there.
PercentToSigma = Callable[[float], float]


@dataclass(frozen=True)
class SigmaWindow:
    """The steps an adapter acts on: `end <= sigma <= start` (sigmas fall as sampling proceeds)."""

    start: float
    end: float

    @classmethod
    def of(cls, percent_to_sigma: PercentToSigma, start_at: float, end_at: float) -> SigmaWindow:
        return cls(float(percent_to_sigma(start_at)), float(percent_to_sigma(end_at)))

    def contains(self, sigma: float) -> bool:
        return self.end <= sigma <= self.start


@dataclass(frozen=True)
class LayerTable:
    """An entry's image K/V at one layer, scaled: the first `counts[0]` rows are what conditional rows attend to
    (one per frame, or one for every frame), the next `counts[1]` what unconditional rows attend to.
    Shapes: (counts[0] + counts[1], T, width); (2, T, width) for a single image prompt."""

    k: torch.Tensor
    v: torch.Tensor
    out_weight: float
    counts: tuple[int, int] = (1, 1)


def check_window(start_at: float, end_at: float) -> None:
    """Raise InvalidOptionError unless 0 <= start_at <= end_at <= 1."""
    if not 0.0 <= start_at <= end_at <= 1.0:
        raise InvalidOptionError(
            f"start_at ({start_at}) must not be after end_at ({end_at}), and both lie in 0..1: the image prompt acts "
            "from start_at to end_at of the sampling. Swap the two values.")


def per_frame_rows(counts: tuple[int, int], frame_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a [positive..., negative...] table expanded to one positive and one negative row per frame, and the
    weight of each expanded row, for weights that act inside the attention.

    Args:
        counts: rows per role in the table.
        frame_weights: the weight of each frame (frame i uses entry min(i, F - 1)). Shape: (F,).

    Returns:
        (row indices into the table, shape (2P,)), (weights, shape (2P,)), with P = max(counts, F) frames.
    """
    frames = torch.arange(max(counts[0], counts[1], frame_weights.numel()))
    positive = frames.clamp(max=counts[0] - 1)
    negative = counts[0] + frames.clamp(max=counts[1] - 1)
    weights = frame_weights[frames.clamp(max=frame_weights.numel() - 1)]
    return torch.cat([positive, negative]), torch.cat([weights, weights])


@dataclass(eq=False)
class AdapterEntry:
    """Shared by every layer an Apply node patches and by every clone of the patched model; its caches only ever
    hold values derived from its own immutable inputs.

    Attributes:
        adapter: the loaded adapter.
        kv: its image K/V (positive and negative tokens).
        weight: the node's weight.
        start_at, end_at: the sampling window as fractions; turned into sigmas when sampling starts.
        embeds_scaling: one of EMBEDS_SCALING.
        mask: where the image prompt acts, in the latent's aspect ratio. Shape: (M, H, W), 0..1, or None.
        fallback_window: sigmas of the window from the model sampling at apply time, used only for model calls made
            outside a sampling run (no run plan).
        owners: host objects to load and offload with the model (opaque here).
        frame_weights: one multiplier of `weight` per latent frame (frame i uses entry min(i, F - 1)), or None.
            Under "V only" they scale each row's image term (`row_weights`); under the K+V modes they act inside
            each frame's attention, folded into per-frame K/V tables built once.
    """

    adapter: IPAdapter
    kv: ImageKV
    weight: float
    start_at: float
    end_at: float
    embeds_scaling: str
    mask: torch.Tensor | None = None
    fallback_window: SigmaWindow = SigmaWindow(float("inf"), 0.0)
    owners: tuple = ()
    frame_weights: tuple[float, ...] | None = None
    _tables: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_window(self.start_at, self.end_at)
        check_embeds_scaling(self.embeds_scaling)
        weights = None if self.frame_weights is None else torch.tensor(self.frame_weights, dtype=torch.float64)
        if weights is not None and weights.numel() == 0:
            raise InvalidOptionError("frame_weights is empty: give at least one weight (e.g. from Frame Weights).")
        in_attention = weights is not None and self.embeds_scaling != NO_KV_SCALING
        #: Per-frame multipliers of each row's image term ("V only"). Shape: (F,), or None.
        self.row_weights = None if in_attention else weights
        self._kv_frame_weights = weights if in_attention else None

    def window(self, percent_to_sigma: PercentToSigma) -> SigmaWindow:
        return SigmaWindow.of(percent_to_sigma, self.start_at, self.end_at)

    def table(self, index: int, rule: LayerRule, device: torch.device, dtype: torch.dtype) -> LayerTable:
        """The scaled K/V table of layer `index` under `rule`, built once per device and dtype."""
        key = (index, rule, device, dtype)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = self._build_table(index, rule, device, dtype)
        return table

    def _build_table(self, index: int, rule: LayerRule, device: torch.device, dtype: torch.dtype) -> LayerTable:
        """"Precise" (swap) layers give conditional rows zero keys and values (an exactly zero image term) and
        unconditional rows the reference images; per-frame weights inside the attention get one row per frame."""
        k, v = self.kv.get(index, device, dtype)
        counts = self.kv.counts
        if rule.swap:
            k, v = (torch.cat([torch.zeros_like(t[:1]), t[:counts[0]]]) for t in (k, v))
            counts = (1, counts[0])
        weight = self.weight * rule.factor
        if self._kv_frame_weights is None:
            k, v, out_weight = scale_embeds(k, v, weight, self.embeds_scaling, self.kv.tokens_per_image)
            return LayerTable(k, v, out_weight, counts)
        rows, weights = per_frame_rows(counts, self._kv_frame_weights * weight)
        rows = rows.to(k.device)
        k, v, out_weight = scale_embeds(k.index_select(0, rows), v.index_select(0, rows), weights,
                                        self.embeds_scaling, self.kv.tokens_per_image)
        return LayerTable(k, v, out_weight, (rows.numel() // 2, rows.numel() // 2))

    def keep_only(self, device: torch.device | str) -> None:
        """Drop cached tensors held on other devices (the model moved, e.g. it was offloaded)."""
        device = torch.device(device)
        self.kv.keep_only(device)
        for key in [k for k in self._tables if k[2] != device]:
            del self._tables[key]
