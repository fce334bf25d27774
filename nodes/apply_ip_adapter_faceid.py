"""ApplyIPAdapterFaceID: MODEL + a FaceID IP_ADAPTER + a face prompt -> a patched clone of MODEL (identity tokens on
every selected layer, the checkpoint's LoRA through the host's LoRA loading)."""

from __future__ import annotations

from functools import partial

import torch

from ..ip_adapter import COMBINE_METHODS, EMBEDS_SCALING, ImagePrompt, IncompatibleEncodingError, faceid_tokens
from ..ip_adapter.entry import check_window
from ..ip_adapter.scaling import check_embeds_scaling
from ..ip_adapter.weight_types import WEIGHT_TYPES
from .apply_ip_adapter import PERCENT, WEIGHT_RANGE, apply_tokens
from .faceid_lora import apply_faceid_lora
from .loaded import LoadedAdapter, project
from .model_checks import check_model

LORA_RANGE = {"default": 0.6, "min": 0.0, "max": 2.0, "step": 0.05}


def _check_faceid(loaded: LoadedAdapter) -> None:
    spec = loaded.adapter.spec
    if not spec.is_faceid:
        raise IncompatibleEncodingError(
            f"'{loaded.name}' is a {spec.kind} adapter, not a FaceID one; use Apply IP-Adapter with Encode Image "
            "Prompt for it.")


class ApplyIPAdapterFaceID:
    DESCRIPTION = (
        "Applies a FaceID IP-Adapter (FaceID, FaceID Plus, Plus v2, Portrait, Portrait unnorm; SD1.5 and SDXL) with "
        "a face prompt from Encode Face Prompt. The identity tokens act on every cross-attention layer the weight "
        "type selects; the LoRA stored in FaceID / Plus checkpoints is applied to the model through ComfyUI's own "
        "LoRA loading at lora_strength (0 = off). Several faces: concat gives every face its tokens (portrait "
        "models are made for several photos of one person). Returns a patched copy; the input model is unchanged."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the face identity patched in (and the FaceID LoRA, if any).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5 or SDXL model matching the adapter."}),
                "ipadapter": ("IP_ADAPTER", {"tooltip": "A FaceID adapter from Load IP-Adapter."}),
                "face_prompt": ("IMAGE_PROMPT", {"tooltip": "From Encode Face Prompt (with clip_vision connected "
                                                            "for FaceID Plus / Plus v2)."}),
                "weight": ("FLOAT", {**WEIGHT_RANGE, "tooltip": "Strength of the identity tokens; 0 turns them off "
                                     "(the LoRA still applies)."}),
                "weight_faceidv2": ("FLOAT", {**WEIGHT_RANGE, "tooltip": "FaceID Plus v2 only: the shortcut scale, "
                                              "how strongly the ID embedding itself shapes the tokens."}),
                "lora_strength": ("FLOAT", {**LORA_RANGE, "tooltip": "The FaceID LoRA stored in the checkpoint, "
                                            "applied to the model; 0 = not applied. Portrait models have none."}),
                "weight_type": (list(WEIGHT_TYPES), {"tooltip": "How the weight is spread over the UNet's layers."}),
                "combine_images": (list(COMBINE_METHODS), {"tooltip": "Several faces: concat gives each its tokens; "
                                   "the others merge the embeddings first."}),
                "start_at": ("FLOAT", {**PERCENT, "default": 0.0, "tooltip": "Fraction of sampling where it starts."}),
                "end_at": ("FLOAT", {**PERCENT, "default": 1.0, "tooltip": "Fraction of sampling where it stops."}),
                "embeds_scaling": (list(EMBEDS_SCALING), {"tooltip": "V only is the original IP-Adapter scale; "
                                   "K+V variants apply the weight inside the attention."}),
            },
            "optional": {
                "attn_mask": ("MASK", {"tooltip": "Where the face acts (white = full strength), in the latent's "
                                                  "aspect ratio."}),
            },
        }

    def apply(self, model, ipadapter: LoadedAdapter, face_prompt: ImagePrompt, weight: float, weight_faceidv2: float,
              lora_strength: float, weight_type: str, combine_images: str, start_at: float, end_at: float,
              embeds_scaling: str, attn_mask: torch.Tensor | None = None) -> tuple:
        _check_faceid(ipadapter)
        layout = check_model(model, ipadapter.adapter)
        check_embeds_scaling(embeds_scaling)  # fail before sampling, not inside it
        check_window(start_at, end_at)
        positive, negative = faceid_tokens(ipadapter.adapter, face_prompt, combine_images, weight_faceidv2,
                                           partial(project, ipadapter))
        with_lora = apply_faceid_lora(model, ipadapter.adapter, lora_strength, layout)
        if weight == 0:  # the LoRA is independent of the weight
            return (with_lora if with_lora is not model else model.clone(),)
        return (apply_tokens(with_lora, ipadapter, positive, negative, weight, weight_type, start_at, end_at,
                             embeds_scaling, attn_mask),)
