"""ApplyIPAdapterStyleComposition: the style of one image prompt and the composition of another, in one node."""

from __future__ import annotations

import torch

from ..ip_adapter import COMBINE_METHODS, EMBEDS_SCALING, ImagePrompt
from ..ip_adapter.entry import check_window
from ..ip_adapter.scaling import check_embeds_scaling
from .apply_ip_adapter import PERCENT, WEIGHT_RANGE, apply_tokens, image_tokens
from .loaded import LoadedAdapter
from .model_checks import check_model

#: The weight types whose layer sets this node uses (ip_adapter/weight_types.py, per family).
STYLE, STRONG_STYLE, COMPOSITION = "style transfer", "strong style transfer", "composition"


class ApplyIPAdapterStyleComposition:
    DESCRIPTION = (
        "Takes the style from one image prompt and the composition (layout, pose) from another, on SDXL and SD1.5. "
        "The style prompt patches the style layers at weight_style (with expand_style: every layer except the "
        "composition layers, i.e. 'strong style transfer'); the composition prompt patches the composition layers "
        "at weight_composition. Exactly the same as two chained Apply IP-Adapter nodes with those weight types."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with both image prompts patched in.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5 or SDXL model."}),
                "ipadapter": ("IP_ADAPTER", {"tooltip": "A plus / standard adapter of the model's family (plus "
                                                        "adapters transfer style best)."}),
                "style_prompt": ("IMAGE_PROMPT", {"tooltip": "The image whose style (colours, textures, medium) "
                                                             "to take."}),
                "composition_prompt": ("IMAGE_PROMPT", {"tooltip": "The image whose composition (layout, pose, "
                                                                   "shapes) to take."}),
                "weight_style": ("FLOAT", {**WEIGHT_RANGE, "tooltip": "Strength of the style; 0 turns it off."}),
                "weight_composition": ("FLOAT", {**WEIGHT_RANGE, "tooltip": "Strength of the composition; 0 turns "
                                                                            "it off."}),
                "expand_style": ("BOOLEAN", {"default": False, "tooltip": "Apply the style to every layer except the "
                                             "composition ones (stronger style, as 'strong style transfer')."}),
                "combine_images": (list(COMBINE_METHODS), {"tooltip": "Several images in one prompt: concat attends "
                                   "to all jointly; the others merge their encodings first (each prompt on its own)."}),
                "start_at": ("FLOAT", {**PERCENT, "default": 0.0, "tooltip": "Fraction of sampling where it starts."}),
                "end_at": ("FLOAT", {**PERCENT, "default": 1.0, "tooltip": "Fraction of sampling where it stops."}),
                "embeds_scaling": (list(EMBEDS_SCALING), {"tooltip": "V only is the original IP-Adapter scale; "
                                   "K+V variants apply the weight inside the attention."}),
            },
            "optional": {
                "attn_mask": ("MASK", {"tooltip": "Where both prompts act (white = full strength), in the latent's "
                                                  "aspect ratio."}),
            },
        }

    def apply(self, model, ipadapter: LoadedAdapter, style_prompt: ImagePrompt, composition_prompt: ImagePrompt,
              weight_style: float, weight_composition: float, expand_style: bool, combine_images: str,
              start_at: float, end_at: float, embeds_scaling: str, attn_mask: torch.Tensor | None = None) -> tuple:
        check_model(model, ipadapter.adapter)
        check_embeds_scaling(embeds_scaling)
        check_window(start_at, end_at)
        parts = ((style_prompt, weight_style, STRONG_STYLE if expand_style else STYLE),
                 (composition_prompt, weight_composition, COMPOSITION))
        patched = model.clone()
        for prompt, weight, weight_type in parts:
            if weight == 0:
                continue  # as Apply IP-Adapter: weight 0 is off, nothing is patched
            positive, negative = image_tokens(ipadapter, prompt, combine_images)
            patched = apply_tokens(patched, ipadapter, positive, negative, weight, weight_type, start_at, end_at,
                                   embeds_scaling, attn_mask)
        return (patched,)
