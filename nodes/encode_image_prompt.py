"""EncodeImagePrompt: reference images -> IMAGE_PROMPT (CLIP-vision encodings, positive and negative)."""

from __future__ import annotations

from dataclasses import dataclass

import comfy.clip_vision
import comfy.model_management as mm
import comfy.utils
import torch

from ..ip_adapter import ClipEncoding, IncompatibleEncodingError
from ..ip_adapter.image_prep import CROP_MODES, cas_sharpen, square_for_encoder
from ..ip_adapter.prompt_file import PreparedImagePrompt

PENULTIMATE = -2
#: Resize without normalising (mean 0, std 1), so sharpening can run on the encoder-sized pixels in 0..1.
IDENTITY_MEAN, IDENTITY_STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
MAX_BATCH = 4096


@dataclass(frozen=True)
class Prep:
    """How images are prepared: crop mode, sharpening amount (0..1), images per forward pass (0 = all)."""

    crop: str = "center"
    sharpening: float = 0.0
    batch_size: int = 0


def _forward(clip_vision, pixel_values: torch.Tensor) -> ClipEncoding:
    """One forward of the host's encoder on already-normalised pixels (B, 3, S, S)."""
    out = clip_vision.model(pixel_values=pixel_values.to(clip_vision.load_device).float(),
                            intermediate_output=PENULTIMATE)
    device = mm.intermediate_device()
    return ClipEncoding(out[2].float().to(device), out[1].float().to(device))


def _preprocess(clip_vision, images: torch.Tensor, prep: Prep) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> normalised pixels (B, 3, S, S): crop or pad, the host's resize and 1/255 rounding,
    optional sharpening, then the encoder's mean and std (identical to the host's clip_preprocess without
    sharpening)."""
    squared, centre_crop = square_for_encoder(images, prep.crop)
    pixels = comfy.clip_vision.clip_preprocess(squared.to(clip_vision.load_device), size=clip_vision.image_size,
                                               mean=IDENTITY_MEAN, std=IDENTITY_STD, crop=centre_crop)
    pixels = cas_sharpen(pixels, prep.sharpening)
    mean = torch.tensor(clip_vision.image_mean, device=pixels.device, dtype=pixels.dtype).view(3, 1, 1)
    std = torch.tensor(clip_vision.image_std, device=pixels.device, dtype=pixels.dtype).view(3, 1, 1)
    return (pixels - mean) / std


def _gather(out: ClipEncoding | None, part: ClipEncoding, start: int, total: int) -> ClipEncoding:
    """Copy one pass's encodings into the outputs for all `total` images, allocated by the first pass."""
    if out is None:
        out = ClipEncoding(*(t.new_empty((total, *t.shape[1:])) for t in (part.image_embeds, part.hidden_states)))
    stop = start + part.num_images
    out.image_embeds[start:stop] = part.image_embeds
    out.hidden_states[start:stop] = part.hidden_states
    return out


def encode_images(clip_vision, images: torch.Tensor, prep: Prep = Prep()) -> ClipEncoding:
    """Encode IMAGE (B, H, W, C), `prep.batch_size` images per pass (0: all at once).

    With several passes, each pass is an interruption point with a progress update and writes into outputs
    allocated once, so memory holds the outputs plus one pass's pixels and activations, however long the batch."""
    mm.load_model_gpu(clip_vision.patcher)
    total = images.shape[0]
    step = prep.batch_size if prep.batch_size > 0 else max(1, total)
    if step >= total:
        return _forward(clip_vision, _preprocess(clip_vision, images, prep))
    starts = range(0, total, step)
    progress = comfy.utils.ProgressBar(len(starts))
    out = None
    for start in starts:
        mm.throw_exception_if_processing_interrupted()
        part = _forward(clip_vision, _preprocess(clip_vision, images[start:start + step], prep))
        out = _gather(out, part, start, total)
        progress.update(1)
    return out


def reference_negative(clip_vision, like: ClipEncoding) -> tuple[ClipEncoding, ClipEncoding]:
    """The reference implementations' unconditional encodings, from one forward of two images.

    Returns:
        negative: zero image_embeds, and the hidden states of an all-zero *normalised* pixel tensor (an image of the
            mean colour, not a black image): the UNet adapters' convention.
        black: the encoding of an all-black image, the negative of XLabs' FLUX.1 pipelines.
    """
    mm.load_model_gpu(clip_vision.patcher)
    size = clip_vision.image_size
    black_pixels = _preprocess(clip_vision, torch.zeros(1, size, size, 3), Prep(crop="none"))
    both = _forward(clip_vision, torch.cat([torch.zeros_like(black_pixels), black_pixels]))
    negative = ClipEncoding(torch.zeros_like(like.image_embeds[:1]), both.hidden_states[:1])
    return negative, both.map(lambda t: t[1:])


class EncodeImagePrompt:
    DESCRIPTION = (
        "Encodes reference images with a CLIP vision model into an image prompt for Apply IP-Adapter. Each image in "
        "the batch is one reference. Crop chooses what part of a non-square image the encoder sees; sharpening "
        "restores detail lost when a large image is shrunk to the encoder's size. Without a negative image, the "
        "unconditional encoding follows each adapter's reference implementation (zero embeddings / a zero "
        "normalised image; a black image for FLUX.1, zero features for SD3.5). The prompt works "
        "with any adapter that expects this CLIP vision model."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "encode"
    RETURN_TYPES = ("IMAGE_PROMPT",)
    OUTPUT_TOOLTIPS = ("CLIP-vision encodings of the reference images and their negatives.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "From Load CLIP Vision or Load IP-Adapter Preset: ViT-H/14 "
                                "for most adapters, ViT-bigG/14 for ip-adapter_sdxl and sd15_vit-G, ViT-L/14 for "
                                "FLUX.1 (XLabs), SigLIP-384 for SD3.5 (InstantX)."}),
                "image": ("IMAGE", {"tooltip": "Reference images; each image of the batch is one reference."}),
                "crop": (list(CROP_MODES), {"default": "center", "tooltip": "center: resize the short side to the "
                         "encoder size and keep the middle. none: stretch the whole image to a square. top / bottom / "
                         "left / right: keep the square at that end of a tall / wide image. pad: keep the whole image, "
                         "padded to a square with the colour of its edges. InstantX's SD3.5 pipeline uses none."}),
            },
            "optional": {
                "negative_image": ("IMAGE", {"tooltip": "Optional image(s) for the unconditional side (e.g. from "
                                   "Negative Image Noise); replaces the default zero encoding."}),
                "sharpening": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                               "Contrast-adaptive sharpening after the resize to the encoder size: 0 = off, "
                               "1 = strongest."}),
                "batch_size": ("INT", {"default": 0, "min": 0, "max": MAX_BATCH, "tooltip": "Images per encoder "
                               "pass: 0 encodes the whole batch at once; set e.g. 16 for long batches (animations) "
                               "to bound memory."}),
            },
        }

    def encode(self, clip_vision, image: torch.Tensor, crop: str, negative_image: torch.Tensor | None = None,
               sharpening: float = 0.0, batch_size: int = 0) -> tuple[PreparedImagePrompt]:
        if clip_vision is None:
            raise IncompatibleEncodingError(
                "Encode Image Prompt got no CLIP vision model: the FaceID and FaceID Portrait presets load none (they "
                "use only the face embedding). Use Encode Face Prompt for them, or Load CLIP Vision for this node.")
        prep = Prep(crop, sharpening, batch_size)
        positive = encode_images(clip_vision, image, prep)
        if negative_image is None:
            negative, black = reference_negative(clip_vision, positive)
            return (PreparedImagePrompt(positive, negative, black_image=black, crop=crop),)
        negative = encode_images(clip_vision, negative_image, prep)
        return (PreparedImagePrompt(positive, negative, crop=crop),)
