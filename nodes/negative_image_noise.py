"""NegativeImageNoise: a noisy negative image (from a reference or a black square) for Encode Image Prompt."""

from __future__ import annotations

import torch

from ..ip_adapter.noise import NOISE_TYPES, negative_noise

MAX_BLUR = 32
MAX_SEED = 0xFFFFFFFFFFFFFFFF


class NegativeImageNoise:
    DESCRIPTION = (
        "Makes negative images for Encode Image Prompt's negative_image: the reference (or, without one, a black "
        "224x224 square) degraded by noise. Sampling is then pushed away from the noisy version instead of from "
        "'no image', which often reduces burned colours and over-copied details. The same seed always gives the "
        "same image."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The negative image(s), one per input image; connect to Encode Image Prompt's negative_image.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "type": (list(NOISE_TYPES), {"tooltip": "fade: blend towards random noise. dissolve: replace a share "
                         "of the pixels by noise. gaussian: add Gaussian noise. shuffle: swap a share of the pixels "
                         "among themselves (needs an image; a black square stays black)."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "How much noise: 0 leaves the image unchanged."}),
                "blur": ("INT", {"default": 0, "min": 0, "max": MAX_BLUR,
                                 "tooltip": "Gaussian blur radius in pixels, applied last (0 = none)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "The noise seed; the same seed gives the same image."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The reference image(s) to degrade; without it, a black square."}),
            },
        }

    def make(self, type: str, strength: float, blur: int, seed: int, image: torch.Tensor | None = None) -> tuple:
        return (negative_noise(type, strength, blur, seed, image),)
