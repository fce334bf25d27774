"""EncodeImagePrompt: reference images -> IMAGE_PROMPT (CLIP-vision encodings, positive and negative)."""

from __future__ import annotations

import comfy.clip_vision
import comfy.model_management as mm
import comfy.utils
import torch

from ..ip_adapter import ClipEncoding, ImagePrompt

#: Images per forward pass; larger batches are encoded in chunks with a progress bar.
CHUNK = 32
PENULTIMATE = -2
CROP_OPTIONS = ("center", "none")


def _forward(clip_vision, pixel_values: torch.Tensor) -> ClipEncoding:
    """One forward of the host's encoder on already-normalised pixels (B, 3, S, S)."""
    out = clip_vision.model(pixel_values=pixel_values.to(clip_vision.load_device).float(),
                            intermediate_output=PENULTIMATE)
    device = mm.intermediate_device()
    return ClipEncoding(out[2].float().to(device), out[1].float().to(device))


def _preprocess(clip_vision, images: torch.Tensor, crop: bool) -> torch.Tensor:
    return comfy.clip_vision.clip_preprocess(
        images.to(clip_vision.load_device), size=clip_vision.image_size, mean=clip_vision.image_mean,
        std=clip_vision.image_std, crop=crop)


def encode_images(clip_vision, images: torch.Tensor, crop: bool) -> ClipEncoding:
    """Encode IMAGE (B, H, W, C) in chunks of CHUNK; each chunk update is also an interruption point."""
    mm.load_model_gpu(clip_vision.patcher)
    chunks = list(torch.split(images, CHUNK))
    progress = comfy.utils.ProgressBar(len(chunks)) if len(chunks) > 1 else None
    parts = []
    for chunk in chunks:
        mm.throw_exception_if_processing_interrupted()
        parts.append(_forward(clip_vision, _preprocess(clip_vision, chunk, crop)))
        if progress is not None:
            progress.update(1)
    return ClipEncoding(torch.cat([p.image_embeds for p in parts]), torch.cat([p.hidden_states for p in parts]))


def reference_negative(clip_vision, like: ClipEncoding) -> tuple[ClipEncoding, ClipEncoding]:
    """The reference implementations' unconditional encodings, from one forward of two images.

    Returns:
        negative: zero image_embeds, and the hidden states of an all-zero *normalised* pixel tensor (an image of the
            mean colour, not a black image): the UNet adapters' convention.
        black: the encoding of an all-black image, the negative of XLabs' FLUX.1 pipelines.
    """
    mm.load_model_gpu(clip_vision.patcher)
    size = clip_vision.image_size
    black_pixels = _preprocess(clip_vision, torch.zeros(1, size, size, 3), crop=False)
    both = _forward(clip_vision, torch.cat([torch.zeros_like(black_pixels), black_pixels]))
    negative = ClipEncoding(torch.zeros_like(like.image_embeds[:1]), both.hidden_states[:1])
    return negative, both.map(lambda t: t[1:])


class EncodeImagePrompt:
    DESCRIPTION = (
        "Encodes reference images with a CLIP vision model into an image prompt for Apply IP-Adapter. Each image in "
        "the batch is one reference. Without a negative image, the unconditional encoding follows each adapter's "
        "reference implementation (zero embeddings / a zero normalised image; a black image for FLUX.1, zero "
        "features for SD3.5). The prompt works with any adapter that expects this CLIP vision model."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "encode"
    RETURN_TYPES = ("IMAGE_PROMPT",)
    OUTPUT_TOOLTIPS = ("CLIP-vision encodings of the reference images and their negatives.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "From Load CLIP Vision: ViT-H/14 for most adapters, "
                                                           "ViT-bigG/14 for ip-adapter_sdxl and sd15_vit-G, ViT-L/14 "
                                                           "for FLUX.1 (XLabs), SigLIP-384 for SD3.5 (InstantX)."}),
                "image": ("IMAGE", {"tooltip": "Reference images; each image of the batch is one reference."}),
                "crop": (list(CROP_OPTIONS), {"default": "center", "tooltip": "center: resize the short side to "
                         "the encoder size and crop the middle. none: stretch the whole image to a square (what "
                         "InstantX's SD3.5 pipeline does)."}),
            },
            "optional": {
                "negative_image": ("IMAGE", {"tooltip": "Optional image(s) for the unconditional side (e.g. noise); "
                                                        "replaces the default zero encoding."}),
            },
        }

    def encode(self, clip_vision, image: torch.Tensor, crop: str, negative_image: torch.Tensor | None = None
               ) -> tuple[ImagePrompt]:
        do_crop = crop == CROP_OPTIONS[0]
        positive = encode_images(clip_vision, image, do_crop)
        if negative_image is None:
            negative, black = reference_negative(clip_vision, positive)
            return (ImagePrompt(positive, negative, black_image=black),)
        return (ImagePrompt(positive, encode_images(clip_vision, negative_image, do_crop)),)
