"""The FaceID LoRA a checkpoint carries, applied to the model through the host's own LoRA loading
(`comfy.sd.load_lora_for_models`), as if it were a LoRA file in diffusers' attention-processor format."""

from __future__ import annotations

import comfy.lora
import comfy.sd

from ..ip_adapter import IncompatibleModelError, IPAdapter
from ..ip_adapter.faceid_lora import diffusers_lora, lora_base_names
from ..ip_adapter.layout import LAYOUTS, UNetLayout


def host_lora(model, adapter: IPAdapter, layout: UNetLayout | None = None) -> dict:
    """The adapter's LoRA under keys the host maps onto `model`'s UNet, every one of them. `layout` is the one Apply
    matched the adapter to (`check_model`; a custom layout for a pruned UNet), by default the family's standard one.

    Raises:
        IncompatibleModelError: a LoRA module has no counterpart in the model's UNet (a pruned or renamed UNet); the
            host would only log "lora key not loaded" and silently apply part of it.
    """
    lora = diffusers_lora(adapter.lora, layout or LAYOUTS[adapter.spec.family], adapter.name)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    unmapped = sorted(lora_base_names(lora) - key_map.keys())
    if unmapped:
        raise IncompatibleModelError(
            f"'{adapter.name}': {len(unmapped)} of its FaceID LoRA modules have no counterpart in this model's UNet "
            f"(first: {unmapped[0]}). The model does not have the standard {adapter.spec.family.value} layout; set "
            "lora_strength to 0, or use a standard checkpoint.")
    return lora


def apply_faceid_lora(model, adapter: IPAdapter, strength: float, layout: UNetLayout | None = None):
    """`model` with the adapter's LoRA at `strength` (a patched clone), or `model` itself when the strength is 0 or
    the adapter carries no LoRA (portrait kinds)."""
    if strength == 0 or not adapter.lora:
        return model
    patched, _ = comfy.sd.load_lora_for_models(model, None, host_lora(model, adapter, layout), strength, 0)
    return patched
