"""The `("double_block", i)` dit replace patch: the block with every stacked adapter's image term, under any foreign
dit patch at the same key.

The host keeps one callable per key and the last writer wins. A foreign patch (another pack's, or Skip Layer
Guidance's) is never dropped and never drops ours: whether it was registered before ours (`outer`, kept here) or
after (re-inserted per call by the guard, `guard.py`), it runs outside and gets our block as its
`extra["original_block"]`. Patch objects are immutable and `__deepcopy__` returns the object itself, so the host's
`clone()` shares adapter weights; stacking builds a new patch.
"""

from __future__ import annotations

from typing import Callable

import torch

from ...ip_adapter.layout import BaseFamily
from . import flux_block, joint_block
from .entry import DiTEntry
from .host import CallContext, call_context

#: family -> (block index, entries, args, original block, context) -> block outputs.
_RUNNERS: dict[BaseFamily, Callable] = {BaseFamily.FLUX: flux_block.run, BaseFamily.SD35_LARGE: joint_block.run}
DitPatch = Callable[[dict, dict], dict]


class OurBlock:
    """What a foreign patch receives as `extra["original_block"]`: our block (with its image terms) on the host's."""

    def __init__(self, patch: DiTBlockPatch, extra: dict) -> None:
        self.patch, self.extra = patch, extra

    def __call__(self, args: dict) -> dict:
        return self.patch.run(args, self.extra)


def call_under(outer: tuple[DitPatch, ...], args: dict, extra: dict, inner: Callable[[dict], dict]) -> dict:
    """Run `outer[0]` around `outer[1]` around ... around `inner` (each sees the next as its original block)."""
    if not outer:
        return inner(args)
    return outer[0](args, {**extra, "original_block": lambda a: call_under(outer[1:], a, extra, inner)})


class DiTBlockPatch:
    """Callable stored at one `("double_block", index)` key: `(args, extra) -> {"img", "txt"}`.

    Args:
        index: the block index (which adapter weights to use).
        family: FLUX.1 (the block runs, then the term is added) or SD3.5 (the mixing runs here).
        entries: the stacked adapters, oldest first.
        fallback: the model seen at apply time, for calls that bypass the guard.
        outer: foreign patches registered at this key before ours, outermost first.
    """

    is_ip_adapter_dit_patch = True

    def __init__(self, index: int, family: BaseFamily, entries: tuple[DiTEntry, ...], fallback: CallContext,
                 outer: tuple[DitPatch, ...] = ()) -> None:
        self.index, self.family, self.entries, self.fallback, self.outer = index, family, entries, fallback, outer

    def stacked(self, entry: DiTEntry, outer: tuple[DitPatch, ...] = ()) -> DiTBlockPatch:
        """A new patch with `entry` added and `outer` foreign patches put outside the existing ones."""
        return DiTBlockPatch(self.index, self.family, self.entries + (entry,), self.fallback, outer + self.outer)

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra.get("original_block")
        if isinstance(original, OurBlock) and original.patch is self:
            # A foreign patch that kept the key's previous occupant (us) and calls it, with our block as its own
            # original: run our block once, on the host's block, not twice.
            extra = original.extra
        return self.run(args, extra)

    def run(self, args: dict, extra: dict) -> dict:
        """The foreign patches registered before ours, around our block."""
        return call_under(self.outer, args, extra, lambda a: self.inner(a, extra))

    def inner(self, args: dict, extra: dict) -> dict:
        """Our block with its image terms, on the host's block (`extra["original_block"]`)."""
        context = call_context(args.get("transformer_options") or {}, self.fallback)
        return _RUNNERS[self.family](self.index, self.entries, args, extra["original_block"], context)

    def __deepcopy__(self, memo: dict) -> DiTBlockPatch:
        return self  # immutable; sharing keeps one copy of the weights across clones

    def to(self, device_or_dtype: torch.device | torch.dtype | str) -> DiTBlockPatch:
        """Host hook: the load/offload device, then the model's storage dtype (ignored: terms are cast at call
        time)."""
        if not isinstance(device_or_dtype, torch.dtype):
            for entry in self.entries:
                entry.keep_only(device_or_dtype)
        return self

    def models(self) -> list:
        """Host hook: the adapters' ModelPatchers load and offload with the model."""
        return [entry.loaded.patcher for entry in self.entries]
