"""One Apply node's contribution: the adapter, its image K/V, weight, sampling window, scaling mode and mask, and the
per-layer K/V tables built from them once per device and dtype (never per step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .adapter import IPAdapter
from .errors import InvalidOptionError
from .kv_cache import ImageKV
from .scaling import check_embeds_scaling, scale_embeds
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
    """An entry's image K/V at one layer, scaled: row 0 is what conditional rows attend to, row 1 what unconditional
    rows attend to. Shapes: (2, T, width)."""

    k: torch.Tensor
    v: torch.Tensor
    out_weight: float


def check_window(start_at: float, end_at: float) -> None:
    """Raise InvalidOptionError unless 0 <= start_at <= end_at <= 1."""
    if not 0.0 <= start_at <= end_at <= 1.0:
        raise InvalidOptionError(
            f"start_at ({start_at}) must not be after end_at ({end_at}), and both lie in 0..1: the image prompt acts "
            "from start_at to end_at of the sampling. Swap the two values.")


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
    _tables: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_window(self.start_at, self.end_at)
        check_embeds_scaling(self.embeds_scaling)

    def window(self, percent_to_sigma: PercentToSigma) -> SigmaWindow:
        return SigmaWindow.of(percent_to_sigma, self.start_at, self.end_at)

    def table(self, index: int, rule: LayerRule, device: torch.device, dtype: torch.dtype) -> LayerTable:
        """The scaled K/V table of layer `index` under `rule`. "Precise" (swap) layers give conditional rows zero
        keys and values (an exactly zero image term) and unconditional rows the reference image."""
        key = (index, rule, device, dtype)
        table = self._tables.get(key)
        if table is None:
            k, v = self.kv.get(index, device, dtype)
            if rule.swap:
                k, v = (torch.stack([torch.zeros_like(t[0]), t[0]]) for t in (k, v))
            k, v, out_weight = scale_embeds(k, v, self.weight * rule.factor, self.embeds_scaling,
                                            self.kv.tokens_per_image)
            table = self._tables[key] = LayerTable(k, v, out_weight)
        return table

    def keep_only(self, device: torch.device | str) -> None:
        """Drop cached tensors held on other devices (the model moved, e.g. it was offloaded)."""
        device = torch.device(device)
        self.kv.keep_only(device)
        for key in [k for k in self._tables if k[2] != device]:
            del self._tables[key]
