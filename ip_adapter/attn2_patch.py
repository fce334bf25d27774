"""The callable stored at one attn2 key: the text attention plus every stacked adapter's image term.

One object per key (the host keeps one callable per key). Its inputs are frozen after construction: stacking
builds a new object with the old contributions plus the new one, and `__deepcopy__` returns the object itself, so
the host's `clone()` (which deep-copies model_options) shares adapter weights instead of copying them. Per-run
decisions arrive in `extra` as a RunPlan; the host's attention function is injected, so this file needs no host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .attention import decoupled_attention, sdpa_attention
from .call_state import CALL_STATE_KEY, CallState
from .entry import AdapterEntry
from .host_hooks import EntryHostHooks
from .run_plan import plan_of
from .weight_types import LayerRule

#: (q, k, v, heads, extra_options) -> output `[B, N, heads * dim_head]`: the host's attention with its options.
HostAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, dict], torch.Tensor]
#: A foreign attn2 patch: (q, k, v, extra_options) -> output.
ForeignPatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, extra: dict) -> torch.Tensor:
    """HostAttention without a host: SDPA (tests, tools)."""
    return sdpa_attention(q, k, v, heads)


@dataclass(frozen=True)
class Contribution:
    """One entry at one layer, with the rule its weight type gives that layer."""

    entry: AdapterEntry
    rule: LayerRule


class Attn2Patch(EntryHostHooks):
    """`(q, k, v, extra_options) -> out` in pre-`to_out` space.

    Args:
        index: the layer's checkpoint index (which `to_k_ip`/`to_v_ip` to use).
        contributions: the stacked adapters at this layer, oldest first.
        attention: the host's attention (HostAttention).
        base: a foreign patch that holds this layer too (another pack's); it computes the text attention instead of
            the host's, so both packs keep working.
    """

    is_ip_adapter_patch = True

    def __init__(self, index: int, contributions: tuple[Contribution, ...], attention: HostAttention,
                 base: ForeignPatch | None = None) -> None:
        self.index, self.contributions, self.attention, self.base = index, contributions, attention, base
        #: Which stacked contributions this patch holds (shared by its re-based copies): its key in a CallState.
        self.state_key = id(contributions)

    @property
    def entries(self) -> tuple[AdapterEntry, ...]:
        return tuple(c.entry for c in self.contributions)

    def stacked(self, contribution: Contribution) -> Attn2Patch:
        """A new patch with `contribution` added; this one is left untouched (the upstream model still uses it)."""
        return Attn2Patch(self.index, self.contributions + (contribution,), self.attention, self.base)

    def with_base(self, base: ForeignPatch | None) -> Attn2Patch:
        """The same contributions over another foreign patch."""
        return Attn2Patch(self.index, self.contributions, self.attention, base)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        heads = extra["n_heads"]
        terms = self.call_state(q, extra).terms(self.state_key, q, extra)
        base = self.base
        text = (lambda a, b, c, h: base(a, b, c, extra)) if base is not None else None
        out = decoupled_attention(q, k, v, heads, terms, lambda a, b, c, h: self.attention(a, b, c, h, extra), text)
        return out.to(q.dtype)

    def call_state(self, q: torch.Tensor, extra: dict) -> CallState:
        """The model call's prepared state (built once per call by the host glue before the UNet runs), or, for a
        call made without it (direct calls, an unexpected grid, dtype or device), this layer's own, prepared now."""
        state = extra.get(CALL_STATE_KEY)
        if state is not None and state.fits(self.state_key, q):
            return state
        latent_hw = tuple(extra["original_shape"][-2:])
        return plan_of(extra).call_state((self,), extra, q.shape[0], latent_hw, q.device, q.dtype, (q.shape[1],))

    def __deepcopy__(self, memo: dict) -> Attn2Patch:
        return self  # frozen inputs; sharing keeps one copy of the weights across clones
