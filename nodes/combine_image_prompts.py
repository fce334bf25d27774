"""CombineImagePrompts: up to four IMAGE_PROMPTs, each with its weight, merged in CLIP space."""

from __future__ import annotations

from ..ip_adapter import ImagePrompt
from ..ip_adapter.prompt_file import PreparedImagePrompt, crop_of
from ..ip_adapter.weighted_prompts import PROMPT_COMBINE_METHODS, combine_weighted

SLOTS = 4
WEIGHT = {"default": 1.0, "min": -1.0, "max": 5.0, "step": 0.05}


class CombineImagePrompts:
    DESCRIPTION = (
        "Merges up to four image prompts into one, each scaled by its weight, before any adapter sees them (in CLIP "
        "space, like the old pack's Combine Embeds). concat keeps every image (they are attended jointly); add, "
        "subtract, average, norm average, max and min reduce them to one image. The negative side follows the "
        "images. All prompts must come from the same CLIP vision model."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "combine"
    RETURN_TYPES = ("IMAGE_PROMPT",)
    OUTPUT_TOOLTIPS = ("The combined image prompt.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        weight_tip = "Scales this prompt's encodings (negative values push away from it); 1 = unchanged."
        optional = {}
        for i in range(2, SLOTS + 1):
            optional[f"image_prompt_{i}"] = ("IMAGE_PROMPT", {"tooltip": f"Image prompt {i} (optional)."})
            optional[f"weight_{i}"] = ("FLOAT", {**WEIGHT, "tooltip": weight_tip})
        return {
            "required": {
                "image_prompt_1": ("IMAGE_PROMPT", {"tooltip": "The first image prompt (from Encode Image Prompt)."}),
                "weight_1": ("FLOAT", {**WEIGHT, "tooltip": weight_tip}),
                "method": (list(PROMPT_COMBINE_METHODS), {"tooltip": "concat: keep every image, attended jointly. "
                           "add / subtract (first minus the mean of the rest) / average / norm average / max / min: "
                           "merge all images into one."}),
            },
            "optional": optional,
        }

    def combine(self, image_prompt_1: ImagePrompt, weight_1: float, method: str, **more) -> tuple[ImagePrompt]:
        prompts, weights, labels = [image_prompt_1], [weight_1], ["image_prompt_1"]
        for i in range(2, SLOTS + 1):
            prompt = more.get(f"image_prompt_{i}")
            if prompt is not None:
                prompts.append(prompt)
                weights.append(more.get(f"weight_{i}", WEIGHT["default"]))
                labels.append(f"image_prompt_{i}")
        combined = combine_weighted(prompts, weights, method, labels)
        return (PreparedImagePrompt(combined.positive, combined.negative, crop=crop_of(prompts)),)
