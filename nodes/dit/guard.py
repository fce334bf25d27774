"""The APPLY_MODEL wrapper of a DiT patched by this pack, run on every model call (Skip Layer Guidance's extra pass
included). It gives the block patches the running transformer and the latent size, and keeps our block patches in
place: where a foreign dit patch took one of our keys (the last writer wins in the host) after the run-plan wrapper
re-joined them at sampling start, e.g. inside a guidance pass, the foreign patch runs around ours instead of
replacing it.
"""

from __future__ import annotations

from comfy.patcher_extension import WrappersMP

from ...ip_adapter.dit.block_patch import CONTEXT_KEY, CallContext, DiTBlockPatch, OurBlock

GUARD_KEY = "ip_adapter_dit"
WRAPPER_TYPE = WrappersMP.APPLY_MODEL


class ForeignAroundOurs:
    """A foreign dit patch with our block as its original block."""

    def __init__(self, foreign, ours: DiTBlockPatch) -> None:
        self.foreign, self.ours = foreign, ours

    def __call__(self, args: dict, extra: dict) -> dict:
        return self.foreign(args, {**extra, "original_block": OurBlock(self.ours, extra)})


class DiTGuard:
    """Wrapper holding our patch per dit key (immutable; a new guard replaces it when another adapter stacks).

    Args:
        patches: `("double_block", i)` -> our patch registered there.
        patch_size: latent pixels per token side of the model.
    """

    def __init__(self, patches: dict[tuple, DiTBlockPatch], patch_size: int) -> None:
        self.patches, self.patch_size = patches, patch_size

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                 **kwargs):
        to = dict(transformer_options or {})
        to[CONTEXT_KEY] = CallContext(executor.class_obj.diffusion_model, tuple(x.shape[-2:]), self.patch_size)
        replace = to.get("patches_replace", {})
        dit = dict(replace.get("dit", {}))
        for key, ours in self.patches.items():
            current = dit.get(key)
            if current is None:
                dit[key] = ours
            elif not getattr(current, "is_ip_adapter_dit_patch", False):
                dit[key] = ForeignAroundOurs(current, ours)
        to["patches_replace"] = {**replace, "dit": dit}
        return executor(x, t, c_concat, c_crossattn, control, to, **kwargs)


def guard_of(model) -> DiTGuard | None:
    """The guard registered on `model` by an earlier Apply IP-Adapter, if any."""
    guards = model.get_wrappers(WRAPPER_TYPE, GUARD_KEY)
    return guards[-1] if guards else None


def set_guard(model, guard: DiTGuard) -> None:
    """Replace the model's guard (the model is a fresh clone owned by the caller)."""
    model.remove_wrappers_with_key(WRAPPER_TYPE, GUARD_KEY)
    model.add_wrapper_with_key(WRAPPER_TYPE, GUARD_KEY, guard)
