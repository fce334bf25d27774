"""What every patched layer of one model call needs, resolved once before the UNet runs.

The run plan (run_plan.py) fills a CallState per model call, eagerly and outside any torch.compile region: for each
patched layer, the image terms of the entries active at this step, each as its K/V table, the row of the table each
batch row reads, and its per-query scale (mask x per-frame weight) for every grid the UNet attends at. A patched
layer then only gathers rows and attends: no dictionary keyed by Python objects, no sigma read back from the device,
nothing that changes shape or structure from step to step. That is what lets torch.compile trace the patch without a
graph break and reuse one graph for every step.

Under torch.compile ("gated" states) an entry outside its start/end window stays in the structure with a zero scale
instead of leaving it, so the window boundary does not recompile the graph; eager runs drop inactive entries and
skip their attention entirely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from .attention import ImageTerm

#: transformer_options key under which a model call's state reaches the patches.
CALL_STATE_KEY = "ip_adapter_call_state"
#: Downsampling factors of the UNet levels that attend (SD1.5: 1, 2, 4 and the middle block at 8).
LEVEL_FACTORS = (1, 2, 4, 8)


def query_counts(latent_hw: tuple[int, int]) -> tuple[int, ...]:
    """Queries per attention layer at each UNet level for a latent of `latent_hw` (each downsampling halves a side,
    rounding up, as the host's stride-2 convolutions do)."""
    h, w = latent_hw
    counts = []
    for _ in LEVEL_FACTORS:
        counts.append(h * w)
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return tuple(dict.fromkeys(counts))


@dataclass(frozen=True)
class PreparedTerm:
    """One entry's image term at one layer for this call.

    Attributes:
        entry, rule: where it comes from (opaque here; read by tools and tests, never by the traced patch).
        k, v: the layer's scaled K/V table. Shapes: (rows, T, width).
        out_weight: the term's output scale (float, or per-row tensor for per-frame weights in the attention).
        rows: the table row each batch row reads. Shape: (B,), int64, on the table's device.
        scales: queries per layer -> the term's multiplier (mask x per-frame weight x gate). Shapes:
            (B or 1, Nq or 1, 1). None when nothing multiplies the term.
    """

    entry: object
    rule: object
    k: torch.Tensor
    v: torch.Tensor
    out_weight: float | torch.Tensor
    rows: torch.Tensor
    scales: Mapping[int, torch.Tensor] | None

    def term(self, num_queries: int) -> ImageTerm:
        scale = None if self.scales is None else self.scales[num_queries]
        return ImageTerm(self.k.index_select(0, self.rows), self.v.index_select(0, self.rows), self.out_weight,
                         scale)


@dataclass(frozen=True)
class CallState:
    """The prepared terms of every patched layer of one model call, for a batch of `batch` rows computed on
    `device` in `dtype`.

    Attributes:
        layers: a patch's state key (Attn2Patch.state_key: which stacked contributions it holds) -> its prepared
            terms, oldest Apply first. Patches made from other contributions (another model's, a tool's) find no
            entry and prepare their own.
    """

    layers: Mapping[int, tuple[PreparedTerm, ...]]
    batch: int
    device: torch.device
    dtype: torch.dtype

    def fits(self, key: int, q: torch.Tensor) -> bool:
        """Whether this state was prepared for the patch with state key `key` and queries `q` (else the patch
        prepares its layer itself)."""
        if key not in self.layers or q.shape[0] != self.batch or q.dtype != self.dtype or q.device != self.device:
            return False
        return all(p.scales is None or q.shape[1] in p.scales for p in self.layers[key])

    def terms(self, key: int, q: torch.Tensor, extra: dict) -> list[ImageTerm]:
        """The image terms of the patch with state key `key` for queries `q` (B, Nq, C); `extra` is the layer's
        transformer options (unused here; instrumentation reads it)."""
        return [p.term(q.shape[1]) for p in self.layers[key]]
