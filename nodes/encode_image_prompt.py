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


def _gather(out: ClipEncoding | None, part: ClipEncoding, start: int, total: int) -> ClipEncoding:
    """Copy one pass's encodings into the outputs for all `total` images, allocated by the first pass."""
    if out is None:
        out = ClipEncoding(*(t.new_empty((total, *t.shape[1:])) for t in (part.image_embeds, part.hidden_states)))
    stop = start + part.num_images
    out.image_embeds[start:stop] = part.image_embeds
    out.hidden_states[start:stop] = part.hidden_states
    return out


def encode_images(clip_vision, images: torch.Tensor, crop: bool, batch_size: int | None = None) -> ClipEncoding:
    """Encode IMAGE (B, H, W, C), `batch_size` images per pass (None: CHUNK; 0: all at once).

    With several passes, each pass is an interruption point with a progress update and writes into outputs
    allocated once, so memory holds the outputs plus one pass's pixels and activations, however long the batch."""
    mm.load_model_gpu(clip_vision.patcher)
    total = images.shape[0]
    batch_size = CHUNK if batch_size is None else batch_size
    step = batch_size if batch_size > 0 else max(1, total)
    if step >= total:
        return _forward(clip_vision, _preprocess(clip_vision, images, crop))
    starts = range(0, total, step)
    progress = comfy.utils.ProgressBar(len(starts))
    out = None
    for start in starts:
        mm.throw_exception_if_processing_interrupted()
        out = _gather(out, _forward(clip_vision, _preprocess(clip_vision, images[start:start + step], crop)), start,
                      total)
        progress.update(1)
    return out


def reference_negative(clip_vision, like: ClipEncoding) -> ClipEncoding:
    """The reference implementation's unconditional encoding: zero image_embeds, and the hidden states of an
    all-zero *normalised* pixel tensor (an image of the mean colour, not a black image)."""
    mm.load_model_gpu(clip_vision.patcher)
    size = clip_vision.image_size
    zero_pixels = _forward(clip_vision, torch.zeros(1, 3, size, size))
    return ClipEncoding(torch.zeros_like(like.image_embeds[:1]), zero_pixels.hidden_states)


class EncodeImagePrompt:
    DESCRIPTION = (
        "Encodes reference images with a CLIP vision model into an image prompt for Apply IP-Adapter. Each image in "
        "the batch is one reference. Without a negative image, the unconditional encoding follows the reference "
        "implementation (zero embeddings / a zero normalised image). The prompt works with any adapter that "
        "expects this CLIP vision model."
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
                                                           "ViT-bigG/14 for ip-adapter_sdxl and sd15_vit-G."}),
                "image": ("IMAGE", {"tooltip": "Reference images; each image of the batch is one reference."}),
                "crop": (list(CROP_OPTIONS), {"default": "center", "tooltip": "center: resize the short side to "
                         "the encoder size and crop the middle. none: stretch the whole image to a square."}),
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
            negative = reference_negative(clip_vision, positive)
        else:
            negative = encode_images(clip_vision, negative_image, do_crop)
        return (ImagePrompt(positive, negative),)
