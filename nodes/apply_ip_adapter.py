"""ApplyIPAdapter: MODEL + IP_ADAPTER + IMAGE_PROMPT -> a patched clone of MODEL."""

from __future__ import annotations

from typing import Sequence

import comfy.model_patcher
import torch

from ..ip_adapter import COMBINE_METHODS, EMBEDS_SCALING, ImageKV, ImagePrompt, IncompatibleEncodingError, combine
from ..ip_adapter.entry import AdapterEntry, SigmaWindow, check_window
from ..ip_adapter.masks import as_mask_batch
from ..ip_adapter.scaling import check_embeds_scaling
from ..ip_adapter.weight_types import WEIGHT_TYPES, layer_rules
from .dit.apply import apply_dit
from .loaded import LoadedAdapter, project
from .model_checks import check_model
from .patch import patch_model

WEIGHT_RANGE = {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05}
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}


def image_tokens(loaded: LoadedAdapter, prompt: ImagePrompt, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative tokens, all images joined on the token axis (one softmax). Shapes: (1, N*T, C)."""
    adapter = loaded.adapter
    if adapter.spec.is_faceid:
        raise IncompatibleEncodingError(
            f"'{adapter.name}' is a {adapter.spec.kind} adapter: it needs InsightFace face embeddings, which "
            "Encode Image Prompt does not produce. Use Apply IP-Adapter FaceID with Encode Face Prompt for it.")
    combined = combine(prompt, method)
    which = adapter.spec.clip_output
    pos, neg = (project(loaded, clip=enc.output(which)) for enc in (combined.positive, combined.negative))
    width = adapter.spec.cross_attention_dim
    return pos.reshape(1, -1, width), neg.reshape(1, -1, width)


class ApplyIPAdapter:
    DESCRIPTION = (
        "Adds an image prompt to a model through IP-Adapter's decoupled cross-attention, on every cross-attention "
        "layer including the middle block. Returns a patched copy; the input model is unchanged. Chain several "
        "Apply IP-Adapter nodes to stack adapters; order with LoRA and ControlNet does not matter."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the image prompt patched in.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5 or SDXL model (LoRA and other patches may come before)."}),
                "ipadapter": ("IP_ADAPTER", {"tooltip": "From Load IP-Adapter; must match the model's family."}),
                "image_prompt": ("IMAGE_PROMPT", {"tooltip": "From Encode Image Prompt, with the CLIP vision "
                                                             "model the adapter expects."}),
                "weight": ("FLOAT", {**WEIGHT_RANGE, "tooltip": "Strength of the image prompt; 0 turns it off."}),
                "weight_type": (list(WEIGHT_TYPES), {"tooltip": "How the weight is spread over the UNet's layers "
                                "(style / composition types patch only some layers)."}),
                "combine_images": (list(COMBINE_METHODS), {"tooltip": "Several reference images: concat attends "
                                   "to all jointly; the others merge their encodings first."}),
                "start_at": ("FLOAT", {**PERCENT, "default": 0.0, "tooltip": "Fraction of sampling where it starts."}),
                "end_at": ("FLOAT", {**PERCENT, "default": 1.0, "tooltip": "Fraction of sampling where it stops."}),
                "embeds_scaling": (list(EMBEDS_SCALING), {"tooltip": "V only is the original IP-Adapter scale; "
                                   "K+V variants apply the weight inside the attention."}),
            },
            "optional": {
                "attn_mask": ("MASK", {"tooltip": "Where the image prompt acts (white = full strength), in the "
                                                  "latent's aspect ratio."}),
            },
        }

    def apply(self, model, ipadapter: LoadedAdapter, image_prompt: ImagePrompt, weight: float, weight_type: str,
              combine_images: str, start_at: float, end_at: float, embeds_scaling: str,
              attn_mask: torch.Tensor | None = None) -> tuple:
        if ipadapter.adapter.spec.is_dit:  # FLUX.1 / SD3.5 adapters patch transformer blocks (nodes/dit)
            return (apply_dit(model, ipadapter, image_prompt, weight, weight_type, combine_images, start_at, end_at,
                              embeds_scaling, attn_mask),)
        check_model(model, ipadapter.adapter)
        check_embeds_scaling(embeds_scaling)  # fail before sampling, not inside it
        check_window(start_at, end_at)
        if weight == 0:
            return (model.clone(),)
        positive, negative = image_tokens(ipadapter, image_prompt, combine_images)
        return (apply_tokens(model, ipadapter, positive, negative, weight, weight_type, start_at, end_at,
                             embeds_scaling, attn_mask),)


def apply_tokens(model, loaded: LoadedAdapter, positive: torch.Tensor, negative: torch.Tensor, weight: float,
                 weight_type: str, start_at: float, end_at: float, embeds_scaling: str,
                 attn_mask: torch.Tensor | None = None, frame_weights: Sequence[float] | None = None):
    """The one way every Apply node patches a model: a clone of `model` with this adapter's image term stacked on
    the layers `weight_type` selects.

    Args:
        positive: image tokens of the conditional rows: one row for every latent frame, or one per frame (frame i
            uses row min(i, P - 1), i its index in the whole batch). Shape: (P, T, cross_attention_dim).
        negative: image tokens of the unconditional rows, in the same way. Shape: (Q, T, cross_attention_dim).
        attn_mask: MASK (H, W) or (M, H, W) in the latent's aspect ratio (frame i uses mask min(i, M - 1)), or None.
        frame_weights: one multiplier of `weight` per latent frame (the last repeats), or None.
    """
    layout = check_model(model, loaded.adapter)
    sampling = model.get_model_object("model_sampling")
    rules = layer_rules(weight_type, layout)
    kv = ImageKV(loaded.adapter, positive, negative, loaded.adapter.spec.num_tokens)
    entry = AdapterEntry(loaded.adapter, kv, weight, start_at, end_at, embeds_scaling, as_mask_batch(attn_mask),
                         SigmaWindow.of(sampling.percent_to_sigma, start_at, end_at), (kv_holder(model, kv, rules),),
                         None if frame_weights is None else tuple(float(w) for w in frame_weights))
    return patch_model(model, layout, entry, rules)


def kv_holder(model, kv: ImageKV, rules: dict) -> comfy.model_patcher.ModelPatcher:
    """The image K/V of every layer the entry patches, computed now in the model's compute dtype and handed to the
    host's model management (loaded, offloaded and counted with the model). The adapter's weights are not needed
    again for sampling, so they are not loaded with the model."""
    base = model.model
    dtype = base.manual_cast_dtype or base.get_dtype()
    tables = kv.precompute([i for i, rule in rules.items() if rule.factor != 0], dtype, model.offload_device)
    return comfy.model_patcher.ModelPatcher(tables, load_device=model.load_device, offload_device=model.offload_device)
