"""Apply IP-Adapter for DiT adapters: check the model and the image prompt, build this node's entry, and register it
on every `("double_block", i)` key of a clone of the model (stacking on our earlier patches, keeping foreign ones)."""

from __future__ import annotations

import torch

from ...ip_adapter import ImageKV, ImagePrompt, combine
from ...ip_adapter.dit.layout import BLOCK_KEY
from ...ip_adapter.dit.prompts import dit_features
from ...ip_adapter.dit.tokens import TimedTokens
from ...ip_adapter.dit.weight_types import block_factors, check_embeds_scaling
from ...ip_adapter.layout import BaseFamily
from ..loaded import LoadedAdapter
from .entry import DiTEntry
from .guard import DiTGuard, guard_of, set_guard
from .host import CallContext
from .patch import DiTBlockPatch
from .target import DiTTarget, check_dit_model


def _mask(attn_mask: torch.Tensor | None) -> torch.Tensor | None:
    """MASK (H, W) or (M, H, W) -> float (M, H, W) on the CPU."""
    if attn_mask is None:
        return None
    return (attn_mask if attn_mask.dim() == 3 else attn_mask[None]).float().cpu()


def _image_sources(loaded: LoadedAdapter, prompt: ImagePrompt, method: str) -> dict:
    """XLabs: image K/V (made once per run); InstantX: tokens made once per step. All images on one token axis."""
    adapter = loaded.adapter
    positive, negative = dit_features(adapter, combine(prompt, method))
    if adapter.spec.family is BaseFamily.SD35_LARGE:
        return {"timed": TimedTokens(adapter, *(f.to(adapter.device, adapter.dtype) for f in (positive, negative)))}
    with torch.no_grad():
        tokens = [adapter.project(f).reshape(1, -1, adapter.spec.cross_attention_dim) for f in (positive, negative)]
    return {"kv": ImageKV(adapter, *tokens)}


def make_entry(model, loaded: LoadedAdapter, prompt: ImagePrompt, factors: tuple[float, ...], combine_images: str,
               start_at: float, end_at: float, attn_mask: torch.Tensor | None) -> DiTEntry:
    sampling = model.get_model_object("model_sampling")
    return DiTEntry(loaded, factors, float(sampling.percent_to_sigma(start_at)),
                    float(sampling.percent_to_sigma(end_at)), _mask(attn_mask), timestep=sampling.timestep,
                    **_image_sources(loaded, prompt, combine_images))


def register(model, target: DiTTarget, entry: DiTEntry):
    """A clone of `model` with `entry` on every block; our earlier patches stack, foreign ones stay outside ours."""
    patched = model.clone()
    current = patched.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    guard = guard_of(patched)
    ours = dict(guard.patches) if guard is not None else {}
    fallback = CallContext(patched.get_model_object("diffusion_model"), None, target.patch_size)
    for index in range(target.num_blocks):
        key = (BLOCK_KEY, index)
        occupant = current.get(key)
        foreign = () if occupant is None or isinstance(occupant, DiTBlockPatch) else (occupant,)
        if isinstance(occupant, DiTBlockPatch):
            new = occupant.stacked(entry)
        elif key in ours:  # ours, since covered by a foreign patch: that one goes outside
            new = ours[key].stacked(entry, outer=foreign)
        else:
            new = DiTBlockPatch(index, target.family, (entry,), fallback, outer=foreign)
        ours[key] = new
        patched.set_model_patch_replace(new, "dit", BLOCK_KEY, index)
    set_guard(patched, DiTGuard(ours, target.patch_size))
    return patched


def apply_dit(model, loaded: LoadedAdapter, prompt: ImagePrompt, weight: float, weight_type: str,
              combine_images: str, start_at: float, end_at: float, embeds_scaling: str,
              attn_mask: torch.Tensor | None = None):
    """Apply IP-Adapter for a FLUX.1 or SD3.5 adapter; everything is checked before the model is touched."""
    target = check_dit_model(model, loaded.adapter)
    check_embeds_scaling(embeds_scaling, target.description)
    factors = block_factors(weight_type, target.num_blocks, target.description)
    entry = make_entry(model, loaded, prompt, tuple(weight * f for f in factors), combine_images, start_at, end_at,
                       attn_mask)
    if weight == 0:
        return model.clone()
    return register(model, target, entry)
