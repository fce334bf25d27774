"""The callable stored at one `("double_block", i)` dit replace key: the block with every stacked adapter's image
term, under any foreign dit patch at the same key.

The host keeps one callable per key and the last writer wins. A foreign patch (another pack's, Skip Layer Guidance's)
is never dropped and never drops ours: whether it was registered before ours or after (re-joined when sampling starts
by the run-plan wrapper, and per call by the DiT guard), it runs outside ours and gets our block as its
`extra["original_block"]`. Inputs are frozen after construction and `__deepcopy__` returns the object itself, so the
host's `clone()` shares adapter weights; stacking builds a new object. The block math is a host-provided runner, so
this file needs no host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..host_hooks import EntryHostHooks
from .entry import DiTEntry

#: transformer_options key of the per-call context (set by the host glue's guard wrapper).
CONTEXT_KEY = "ip_adapter_dit_context"
#: A foreign dit patch: (args, extra) -> block outputs.
DitPatch = Callable[[dict, dict], dict]


@dataclass(frozen=True)
class CallContext:
    """One model call as the block runners need it.

    Attributes:
        diffusion_model: the transformer being run (honours object patches such as compiled models).
        latent_hw: the latent's (height, width), or None when unknown.
        patch_size: latent pixels per token side.
    """

    diffusion_model: torch.nn.Module
    latent_hw: tuple[int, int] | None
    patch_size: int

    @property
    def token_grid(self) -> tuple[int, tuple[int, int]] | None:
        """(tokens of the generated image, latent (h, w)), or None when the latent size is unknown."""
        if self.latent_hw is None:
            return None
        h, w = self.latent_hw
        return math.ceil(h / self.patch_size) * math.ceil(w / self.patch_size), self.latent_hw


#: (block index, entries, the host's block arguments, the block below ours, context) -> block outputs.
BlockRunner = Callable[[int, tuple[DiTEntry, ...], dict, Callable[[dict], dict], CallContext], dict]


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


class DiTBlockPatch(EntryHostHooks):
    """`(args, extra) -> {"img", "txt"}` at one block.

    Args:
        index: the block index (which adapter weights to use).
        runner: the family's block math (host glue): FLUX.1 runs the block then adds the term; SD3.5 mixes here.
        entries: the stacked adapters, oldest first.
        fallback: the model seen at apply time, for calls that bypass the guard.
        outer: foreign patches at this key, outermost first.
    """

    is_ip_adapter_patch = True  # the run-plan wrapper re-joins foreign patches with ours
    is_ip_adapter_dit_patch = True

    def __init__(self, index: int, runner: BlockRunner, entries: tuple[DiTEntry, ...], fallback: CallContext,
                 outer: tuple[DitPatch, ...] = ()) -> None:
        self.index, self.runner, self.entries, self.fallback, self.outer = index, runner, entries, fallback, outer

    @property
    def base(self) -> DitPatch | None:
        """The outermost foreign patch, if any."""
        return self.outer[0] if self.outer else None

    def stacked(self, entry: DiTEntry, outer: tuple[DitPatch, ...] = ()) -> DiTBlockPatch:
        """A new patch with `entry` added and `outer` foreign patches put outside the existing ones."""
        return DiTBlockPatch(self.index, self.runner, self.entries + (entry,), self.fallback, outer + self.outer)

    def with_base(self, foreign: DitPatch | None) -> DiTBlockPatch:
        """The same entries under one more foreign patch (registered at our key after us)."""
        return DiTBlockPatch(self.index, self.runner, self.entries, self.fallback,
                             self.outer if foreign is None else (foreign,) + self.outer)

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
        context = (args.get("transformer_options") or {}).get(CONTEXT_KEY) or self.fallback
        return self.runner(self.index, self.entries, args, extra["original_block"], context)

    def __deepcopy__(self, memo: dict) -> DiTBlockPatch:
        return self  # frozen inputs; sharing keeps one copy of the weights across clones
