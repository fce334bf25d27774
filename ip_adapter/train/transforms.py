"""Image preprocessing of the recipe: shortest side resized (bilinear) to the resolution, centre crop, [-1, 1] for the
VAE; the image encoder's own CLIP preprocessing for the image prompt. SDXL also records the original size and the
crop's top-left corner for its size conditioning."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CroppedImage:
    """A training image ready for the VAE.

    Attributes:
        pixels: Shape: (3, resolution, resolution), values in [-1, 1].
        original_size: (height, width) before resizing (SDXL `original_size`).
        crop_top_left: (top, left) of the crop in the resized image (SDXL `crops_coords_top_left`).
    """

    pixels: torch.Tensor
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) with the shorter side equal to `resolution`, the other scaled and truncated as torchvision's
    `Resize(int)` does."""
    if width <= height:
        return resolution, int(resolution * height / width)
    return int(resolution * width / height), resolution


def resize_center_crop(image, resolution: int) -> CroppedImage:
    """A PIL RGB image -> `CroppedImage` (bilinear shortest-side resize, centre crop, `(x / 255 - 0.5) / 0.5`)."""
    from PIL import Image

    width, height = image.size
    new_w, new_h = resized_size(width, height, resolution)
    resized = image.resize((new_w, new_h), Image.BILINEAR)
    # torchvision's CenterCrop rounds the offsets the same way.
    top, left = int(round((new_h - resolution) / 2.0)), int(round((new_w - resolution) / 2.0))
    cropped = resized.crop((left, top, left + resolution, top + resolution))
    array = torch.frombuffer(bytearray(cropped.tobytes()), dtype=torch.uint8).reshape(resolution, resolution, 3)
    pixels = array.permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)
    return CroppedImage(pixels, (height, width), (top, left))


class ClipPreprocess:
    """The image encoder's preprocessing (transformers `CLIPImageProcessor`): resize, centre crop, normalise.

    Args:
        processor: a `CLIPImageProcessor` (from the encoder folder's `preprocessor_config.json`, or the default one
            sized to the encoder).
    """

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        """A PIL RGB image -> normalised pixels. Shape: (3, S, S)."""
        return self.processor(images=image, return_tensors="pt").pixel_values[0]
