"""ApplyIPAdapterTiled: a reference of any aspect ratio or size, cut into overlapping square tiles; each tile is
encoded and conditions its region of the latent through its mask (one stacked Apply per tile)."""

from __future__ import annotations

import torch

from ..ip_adapter import ClipEncoding, ImagePrompt
from ..ip_adapter.entry import check_window
from ..ip_adapter.scaling import check_embeds_scaling
from ..ip_adapter.tiles import crop_tiles, restrict_masks, tile_grid, tile_masks
from .apply_ip_adapter import ApplyIPAdapter, apply_tokens, image_tokens
from .encode_image_prompt import Prep, encode_images, reference_negative
from .loaded import LoadedAdapter
from .model_checks import check_model

SHARPENING = {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05}
#: Inputs shared with Apply IP-Adapter, in the contract's order around the tiled node's own inputs.
SHARED_BEFORE = ("model", "ipadapter")
SHARED_AFTER = ("weight", "weight_type", "start_at", "end_at")


def encode_reference(clip_vision, images: torch.Tensor, sharpening: float) -> ClipEncoding:
    """Square tiles (B, S, S, C) encoded as Encode Image Prompt encodes them (a square needs no crop), with its
    contrast-adaptive sharpening after the resize to the encoder size."""
    return encode_images(clip_vision, images, Prep(crop="center", sharpening=sharpening))


def tile_prompts(clip_vision, crops: list[torch.Tensor], negative_image: torch.Tensor | None,
                 sharpening: float) -> list[ImagePrompt]:
    """One image prompt per tile (its crops of every reference image), sharing one negative encoding; every tile
    goes through the encoder in the same pass."""
    encoded = encode_reference(clip_vision, torch.cat(crops), sharpening)
    if negative_image is None:
        negative, _ = reference_negative(clip_vision, encoded)  # UNet adapters only: no black-image negative
    else:
        negative = encode_reference(clip_vision, negative_image, sharpening)
    per_tile = crops[0].shape[0]
    return [ImagePrompt(encoded.map(lambda t, i=i: t[i * per_tile:(i + 1) * per_tile]), negative)
            for i in range(len(crops))]


class ApplyIPAdapterTiled:
    DESCRIPTION = (
        "Adds a reference of any aspect ratio or size without cropping it away: the image is cut into overlapping "
        "square tiles, each tile is encoded and conditions the matching region of the latent (the reference is laid "
        "over the whole latent). Overlapping tiles share the weight, so seams keep the node's weight. Returns the "
        "tiles and their masks as previews. Several images in the batch attend jointly, tile by tile."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL", "IMAGE", "MASK")
    RETURN_NAMES = ("MODEL", "tiles", "masks")
    OUTPUT_TOOLTIPS = ("The model with one image prompt per tile patched in.", "The tiles, as encoded.",
                       "Each tile's mask over the reference (they sum to 1 where tiles overlap).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        base = ApplyIPAdapter.INPUT_TYPES()
        required = {name: base["required"][name] for name in SHARED_BEFORE}
        required["clip_vision"] = ("CLIP_VISION", {"tooltip": "From Load CLIP Vision: the encoder the adapter "
                                   "expects (ViT-H/14 for most adapters, ViT-bigG/14 for ip-adapter_sdxl)."})
        required["image"] = ("IMAGE", {"tooltip": "The reference: wide, tall or large; every part of it is used."})
        required.update({name: base["required"][name] for name in SHARED_AFTER})
        required["sharpening"] = ("FLOAT", {**SHARPENING, "tooltip": "Contrast-adaptive sharpening of each tile "
                                  "after its resize to the encoder size: 0 = off, 1 = strongest."})
        required["embeds_scaling"] = base["required"]["embeds_scaling"]
        return {
            "required": required,
            "optional": {
                "attn_mask": ("MASK", {"tooltip": "Where the image prompt acts, in the latent's aspect ratio; it "
                              "restricts every tile."}),
                "negative_image": ("IMAGE", {"tooltip": "Optional image for the unconditional side (e.g. noise)."}),
            },
        }

    def apply(self, model, ipadapter: LoadedAdapter, clip_vision, image: torch.Tensor, weight: float,
              weight_type: str, start_at: float, end_at: float, sharpening: float, embeds_scaling: str,
              attn_mask: torch.Tensor | None = None, negative_image: torch.Tensor | None = None) -> tuple:
        check_model(model, ipadapter.adapter)
        check_embeds_scaling(embeds_scaling)
        check_window(start_at, end_at)
        grid = tile_grid(image.shape[1], image.shape[2])
        crops = crop_tiles(image, grid)
        masks = restrict_masks(tile_masks(grid), attn_mask)
        if weight == 0:
            return (model.clone(), torch.cat(crops), masks)
        whole = len(grid.tiles) == 1 and attn_mask is None  # one tile, everywhere: the plain image prompt
        patched = model
        for prompt, mask in zip(tile_prompts(clip_vision, crops, negative_image, sharpening), masks):
            positive, negative = image_tokens(ipadapter, prompt, "concat")
            patched = apply_tokens(patched, ipadapter, positive, negative, weight, weight_type, start_at, end_at,
                                   embeds_scaling, None if whole else mask)
        return (patched, torch.cat(crops), masks)
