"""Apply IP-Adapter for DiT adapters: check the model and the image prompt, build this node's entry, and register it
on every `("double_block", i)` key of a clone of the model: stacked on our earlier patches, foreign ones kept outside,
listed for the run-plan wrapper (windows and row roles decided when sampling starts), plus the DiT guard."""

from __future__ import annotations

import torch

from ...ip_adapter import ImageKV, ImagePrompt, combine
from ...ip_adapter.dit.block_patch import CallContext, DiTBlockPatch
from ...ip_adapter.dit.entry import DiTEntry
from ...ip_adapter.dit.layout import BLOCK_KEY
from ...ip_adapter.dit.prompts import dit_features
from ...ip_adapter.dit.tokens import TimedTokens
from ...ip_adapter.dit.weight_types import block_factors, check_embeds_scaling
from ...ip_adapter.entry import SigmaWindow, check_window
from ...ip_adapter.layout import BaseFamily
from ..loaded import LoadedAdapter, project
from ..patch import REGISTRY_KEY, register_run_plan
from . import flux_block, joint_block
from .guard import DiTGuard, guard_of, set_guard
from .target import DiTTarget, check_dit_model

RUNNERS = {BaseFamily.FLUX: flux_block.run, BaseFamily.SD35_LARGE: joint_block.run}


def _mask(attn_mask: torch.Tensor | None) -> torch.Tensor | None:
    """MASK (H, W) or (M, H, W) -> float (M, H, W) on the CPU."""
    if attn_mask is None:
        return None
    return (attn_mask if attn_mask.dim() == 3 else attn_mask[None]).float().cpu()


def _image_sources(loaded: LoadedAdapter, positive: torch.Tensor, negative: torch.Tensor) -> dict:
    """XLabs: image K/V (made once); InstantX: tokens made once per step. All images on one token axis."""
    adapter = loaded.adapter
    if adapter.spec.family is BaseFamily.SD35_LARGE:
        return {"timed": TimedTokens(adapter, positive, negative)}
    tokens = [project(loaded, clip=f).reshape(1, -1, adapter.spec.cross_attention_dim) for f in (positive, negative)]
    return {"kv": ImageKV(adapter, *tokens, adapter.spec.num_tokens)}


def make_entry(model, loaded: LoadedAdapter, features: tuple[torch.Tensor, torch.Tensor], factors: tuple[float, ...],
               start_at: float, end_at: float, attn_mask: torch.Tensor | None) -> DiTEntry:
    """The entry of one Apply node; `features` are the positive and negative encoder outputs (`dit_features`)."""
    sampling = model.get_model_object("model_sampling")
    return DiTEntry(loaded.adapter, factors, start_at, end_at, _mask(attn_mask),
                    SigmaWindow.of(sampling.percent_to_sigma, start_at, end_at), (loaded.patcher,),
                    timestep=sampling.timestep, **_image_sources(loaded, *features))


def register(model, target: DiTTarget, entry: DiTEntry):
    """A clone of `model` with `entry` on every block; our earlier patches stack, foreign ones stay outside ours."""
    patched = model.clone()
    options = patched.model_options["transformer_options"]
    current = options.get("patches_replace", {}).get("dit", {})
    registry = dict(options.get(REGISTRY_KEY, {}))
    guard = guard_of(patched)
    ours = dict(guard.patches) if guard is not None else {}
    fallback = CallContext(patched.get_model_object("diffusion_model"), None, target.patch_size)
    for index in range(target.num_blocks):
        key = (BLOCK_KEY, index)
        occupant = current.get(key)
        if isinstance(occupant, DiTBlockPatch):
            new = occupant.stacked(entry)
        elif key in ours:  # ours, since covered by a foreign patch: that one goes outside
            new = ours[key].stacked(entry).with_base(occupant)
        else:
            new = DiTBlockPatch(index, RUNNERS[target.family], (entry,), fallback, () if occupant is None else
                                (occupant,))
        ours[key] = registry[("dit", key)] = new
        patched.set_model_patch_replace(new, "dit", BLOCK_KEY, index)
    patched.model_options["transformer_options"][REGISTRY_KEY] = registry
    register_run_plan(patched)
    set_guard(patched, DiTGuard(ours, target.patch_size))
    return patched


def apply_dit(model, loaded: LoadedAdapter, prompt: ImagePrompt, weight: float, weight_type: str,
              combine_images: str, start_at: float, end_at: float, embeds_scaling: str,
              attn_mask: torch.Tensor | None = None):
    """Apply IP-Adapter for a FLUX.1 or SD3.5 adapter; everything is checked before the model is touched."""
    target = check_dit_model(model, loaded.adapter)
    check_embeds_scaling(embeds_scaling, target.description)
    check_window(start_at, end_at)
    factors = block_factors(weight_type, target.num_blocks, target.description)
    features = dit_features(loaded.adapter, combine(prompt, combine_images))  # checks the encoder too
    if weight == 0:
        return model.clone()
    entry = make_entry(model, loaded, features, tuple(weight * f for f in factors), start_at, end_at, attn_mask)
    return register(model, target, entry)
