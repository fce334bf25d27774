"""Host glue for the attn2 patch: the host's attention, registration on a clone (copy-on-write stacking), and the
OUTER_SAMPLE wrapper that builds each sampling run's plan.

When sampling starts, the wrapper (1) turns every entry's start_at/end_at into sigmas with the model sampling then in
force, (2) maps every conditioning's uuid to its role from the guider's named conds, and (3) re-joins our patches
with foreign attn2 patches registered after ours (the host looks up `(block, id, index)` before `(block, id)`, and a
later writer replaces an earlier one), all in the run's own copy of the model options.
"""

from __future__ import annotations

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
import torch

from ..ip_adapter.attn2_patch import Attn2Patch, Contribution
from ..ip_adapter.entry import AdapterEntry
from ..ip_adapter.layout import UNetLayout
from ..ip_adapter.rows import roles_by_uuid
from ..ip_adapter.run_plan import RUN_PLAN_KEY, RunPlan
from ..ip_adapter.weight_types import LayerRule

#: transformer_options key: {(patch group, key): our patch}, copy-on-write like the host's own patch dicts.
REGISTRY_KEY = "ip_adapter_patches"
WRAPPER_KEY = "ip_adapter_run_plan"
OUTER_SAMPLE = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, extra: dict) -> torch.Tensor:
    """The host's attention, exactly as its own CrossAttention calls it (precision and override hooks kept)."""
    return comfy_attention.optimized_attention(q, k, v, heads, attn_precision=extra.get("attn_precision"),
                                               transformer_options=extra)


def _is_ours(patch) -> bool:
    return getattr(patch, "is_ip_adapter_patch", False)


def _rejoin_foreign(options: dict) -> None:
    """In a run's model options: give each of our patches the foreign patch that now holds its layer as its base."""
    replace = options.get("patches_replace", {})
    for (group, key), ours in options.get(REGISTRY_KEY, {}).items():
        table = replace.get(group)
        if table is None:
            continue
        current = table.get(key)
        if current is not None and not _is_ours(current):  # a foreign patch replaced ours at our key
            table[key] = ours.with_base(current)
            continue
        ours = current if current is not None else ours
        short = table.get(key[:2])
        if short is not None and not _is_ours(short) and ours.base is None:  # hidden by our longer key
            table[key] = ours.with_base(short)


def _entries(options: dict) -> set[AdapterEntry]:
    return {entry for patch in options.get(REGISTRY_KEY, {}).values() for entry in patch.entries}


def outer_sample_wrapper(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper (registered once per model): builds the run plan, then samples."""
    guider = executor.class_obj
    options = guider.model_options.setdefault("transformer_options", {})  # the run's own copy (CFGGuider.sample)
    sampling = guider.model_patcher.get_model_object("model_sampling")
    _rejoin_foreign(options)
    windows = {entry: entry.window(sampling.percent_to_sigma) for entry in _entries(options)}
    options[RUN_PLAN_KEY] = RunPlan(windows, roles_by_uuid(getattr(guider, "conds", None) or {}))
    return executor(*args, **kwargs)


def register_run_plan(model) -> None:
    """Make sure `model` builds a run plan when sampling starts (once, however many adapters it carries)."""
    if outer_sample_wrapper not in model.get_wrappers(OUTER_SAMPLE, WRAPPER_KEY):
        model.add_wrapper_with_key(OUTER_SAMPLE, WRAPPER_KEY, outer_sample_wrapper)


def patch_model(model, layout: UNetLayout, entry: AdapterEntry, rules: dict[int, LayerRule]):
    """Clone `model` and register a new patch on every layer `rules` names (copy-on-write stacking).

    Args:
        rules: checkpoint index -> rule, for the layers this entry patches.
    """
    patched = model.clone()
    options = patched.model_options["transformer_options"]
    replace = options.get("patches_replace", {}).get("attn2", {})
    registry = dict(options.get(REGISTRY_KEY, {}))
    for layer in layout.layers:
        rule = rules.get(layer.checkpoint_index)
        if rule is None:
            continue
        key = layer.patch_key
        existing = replace.get(key, replace.get(key[:2]))
        contribution = Contribution(entry, rule)
        if _is_ours(existing):
            new = existing.stacked(contribution)
        else:
            new = Attn2Patch(layer.checkpoint_index, (contribution,), host_attention, base=existing)
        patched.set_model_attn2_replace(new, *key)
        registry[("attn2", key)] = new
    patched.model_options["transformer_options"][REGISTRY_KEY] = registry
    register_run_plan(patched)
    return patched
