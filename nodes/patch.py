"""The attn2 replace patch: host attention on the text tokens plus every stacked adapter's image term.

One patch object per attn2 key (the host keeps one callable per key). Patch objects and their entries are
immutable: stacking builds a new patch holding the old entries plus the new one, and `__deepcopy__` returns the
object itself, so the host's `clone()` (which deep-copies model_options) shares adapter weights instead of
copying them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import comfy.ldm.modules.attention as comfy_attention
import torch

from ..ip_adapter import ImageKV, ImageTerm, mask_for_queries, rows_for_chunks, scale_embeds
from ..ip_adapter.attention import NEGATIVE_CHUNK, image_attention
from ..ip_adapter.encoding import fit_images
from ..ip_adapter.weight_types import LayerRule
from .loaded import LoadedAdapter

#: What the host passes when no sigma is known (e.g. a direct model call): treated as "inside every window".
NO_SIGMA = None


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, extra: dict) -> torch.Tensor:
    """The host's attention, exactly as its own CrossAttention calls it (precision and override hooks kept)."""
    return comfy_attention.optimized_attention(q, k, v, heads, attn_precision=extra.get("attn_precision"),
                                               transformer_options=extra)


@dataclass(eq=False)
class AdapterEntry:
    """One Apply IP-Adapter node's contribution, shared by all the keys it patches."""

    loaded: LoadedAdapter
    kv: ImageKV
    rules: dict[int, LayerRule]  # checkpoint index -> rule (absent: this entry leaves the layer alone)
    weight: float
    sigma_start: float
    sigma_end: float
    embeds_scaling: str
    mask: torch.Tensor | None  # (M, H, W) in 0..1, latent aspect
    _mask_cache: dict = field(default_factory=dict, repr=False)
    _window: tuple = field(default=(None, True), repr=False)  # (sigmas tensor of the current step, inside?)

    def active(self, extra: dict) -> bool:
        """Whether the current step's sigma lies in the start_at..end_at window. Every layer of a step sees the same
        sigmas tensor, so the (device-synchronising) comparison runs once per step, not once per layer."""
        sigmas = extra.get("sigmas")
        if sigmas is NO_SIGMA:
            return True
        if self._window[0] is not sigmas:
            sigma = float(sigmas.flatten()[0])
            self._window = (sigmas, self.sigma_end <= sigma <= self.sigma_start)
        return self._window[1]

    def keep_only(self, device: torch.device | str) -> None:
        """Drop cached K/V and masks held on other devices (the model moved, e.g. it was offloaded)."""
        self.kv.keep_only(device)
        self._mask_cache.clear()

    def _row_mask(self, q: torch.Tensor, chunks: list[int], rows: int, extra: dict) -> torch.Tensor | None:
        if self.mask is None:
            return None
        hw = tuple(extra["original_shape"][-2:])
        key = (q.shape[1], hw, q.device, q.dtype, rows, tuple(chunks))
        if key not in self._mask_cache:
            per_query = fit_images(mask_for_queries(self.mask, q.shape[1], hw), rows)
            self._mask_cache[key] = per_query.repeat(len(chunks), 1, 1).to(q.device, q.dtype)
        return self._mask_cache[key]

    def term(self, index: int, q: torch.Tensor, extra: dict) -> ImageTerm | None:
        """This entry's image term at layer `index` for the current batch, or None when it adds nothing."""
        rule = self.rules.get(index)
        if rule is None or self.weight * rule.factor == 0 or not self.active(extra):
            return None
        chunks = _chunks(extra, q.shape[0])
        rows = q.shape[0] // len(chunks)
        k2, v2 = self.kv.get(index, q.device, q.dtype)
        k2, v2, out_weight = scale_embeds(k2, v2, self.weight * rule.factor, self.embeds_scaling)
        pos, neg = slice(0, 1), slice(1, 2)
        # "Precise" layers: unconditional rows see the reference image, conditional rows get nothing.
        neg = pos if rule.swap else neg
        k = rows_for_chunks(k2[pos], k2[neg], chunks, rows)
        v = rows_for_chunks(v2[pos], v2[neg], chunks, rows)
        mask = self._row_mask(q, chunks, rows, extra)
        if rule.swap:
            mask = _swap_row_mask(chunks, rows, q) if mask is None else mask * _swap_row_mask(chunks, rows, q)
        return ImageTerm(k, v, out_weight, mask)


def _chunks(extra: dict, batch: int) -> list[int]:
    """The batch's chunk kinds; without the sampler's `cond_or_uncond` (a direct model call), every row is
    conditional."""
    chunks = list(extra.get("cond_or_uncond") or [])
    return chunks if chunks and batch % len(chunks) == 0 else [0]


def _swap_row_mask(chunks: list[int], rows: int, q: torch.Tensor) -> torch.Tensor:
    keep = torch.tensor([c == NEGATIVE_CHUNK for c in chunks], dtype=q.dtype, device=q.device)
    return keep.repeat_interleave(rows)[:, None, None]


class IPAdapterAttn2Patch:
    """Callable stored at one attn2 key: `(q, k, v, extra_options) -> out` in pre-`to_out` space.

    Args:
        index: the layer's checkpoint index (which `to_k_ip`/`to_v_ip` to use).
        entries: the stacked adapters, oldest first.
        base: a foreign callable that was registered at this key before us (another pack's patch); it computes
            the text attention instead of the host's, so both packs keep working.
    """

    is_ip_adapter_patch = True

    def __init__(self, index: int, entries: tuple[AdapterEntry, ...], base: Callable | None = None) -> None:
        self.index, self.entries, self.base = index, entries, base

    def stacked(self, entry: AdapterEntry) -> IPAdapterAttn2Patch:
        """A new patch with `entry` added; this one is left untouched (the upstream model still uses it)."""
        return IPAdapterAttn2Patch(self.index, self.entries + (entry,), self.base)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        heads = extra["n_heads"]
        out = self.base(q, k, v, extra) if self.base is not None else host_attention(q, k, v, heads, extra)
        for entry in self.entries:
            term = entry.term(self.index, q, extra)
            if term is not None:
                out = out + image_attention(q, term, heads, lambda a, b, c, h: host_attention(a, b, c, h, extra))
        return out.to(q.dtype)

    def __deepcopy__(self, memo: dict) -> IPAdapterAttn2Patch:
        return self  # immutable; sharing keeps one copy of the weights across clones

    def to(self, device_or_dtype: torch.device | torch.dtype | str) -> IPAdapterAttn2Patch:
        """Host hook: called with the load/offload device, then the UNet's storage dtype (ignored: terms are cast
        to q's dtype at call time, so fp8 UNets never push the adapter into fp8)."""
        if not isinstance(device_or_dtype, torch.dtype):
            for entry in self.entries:
                entry.keep_only(device_or_dtype)
        return self

    def models(self) -> list:
        """Host hook: the adapters' ModelPatchers load and offload with the UNet."""
        return [entry.loaded.patcher for entry in self.entries]
