"""Face identity embeddings (InsightFace ArcFace) as the FaceID adapters consume them, and the pure steps around
detection: the detection sizes to try, which face of a photo to keep, and image conversions.

Which embedding each model reads (checkpoints.md §6.1): every FaceID kind uses the L2-normalised embedding, except
`faceid-portrait-unnorm`, trained on the raw one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .spec import FACE_ID_DIM

#: Detection sizes (square, pixels), largest first: the reference size 640, then smaller ones, at which faces that
#: fill most of the photo (close-ups) are often found when 640 misses them.
DETECTION_SIZES = (640, 576, 512, 448, 384, 320)
#: Side of the aligned face crop fed to CLIP vision (FaceID Plus / Plus v2), as in the official examples; CLIP's own
#: preprocessing of a square 224 crop is then only normalisation.
ALIGNED_CROP_SIZE = 224
#: Kinds trained on the raw (unnormalised) ArcFace embedding.
UNNORMALISED_KINDS = frozenset({"faceid-portrait-unnorm"})
_CHANNELS = 3
_MAX_LEVEL = 255.0


@dataclass(frozen=True)
class FaceEmbeds:
    """ArcFace identity embeddings of N faces, one per reference image, exactly as the recognizer outputs them.

    Attributes:
        raw: the unnormalised embeddings. Shape: (N, 512).
    """

    raw: torch.Tensor

    def __post_init__(self) -> None:
        if self.raw.dim() != 2 or self.raw.shape[1] != FACE_ID_DIM:
            raise ValueError(f"face embeddings must have shape (N, {FACE_ID_DIM}), got {tuple(self.raw.shape)}")

    @property
    def num_faces(self) -> int:
        return self.raw.shape[0]

    def normed(self) -> torch.Tensor:
        """`embedding / ||embedding||`, InsightFace's `normed_embedding`. Shape: (N, 512)."""
        return self.raw / torch.linalg.vector_norm(self.raw, dim=-1, keepdim=True)

    def for_kind(self, kind: str) -> torch.Tensor:
        """The embedding the adapter `kind` was trained on: raw for the unnorm portrait, normalised otherwise."""
        return self.raw if kind in UNNORMALISED_KINDS else self.normed()

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> FaceEmbeds:
        return FaceEmbeds(fn(self.raw))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FaceEmbeds:
        return self.map(lambda t: t.to(device=device, dtype=dtype))


def largest_face(boxes: Sequence[Sequence[float]], scores: Sequence[float]) -> int:
    """Index of the face to keep: the largest box (x1, y1, x2, y2); equal areas go to the higher detection score.

    The subject of a reference photo is its largest face; InsightFace's own order (by score) can put a sharp face in
    the background first.
    """
    if not boxes:
        raise ValueError("no faces to choose from")
    areas = [max(0.0, float(b[2]) - float(b[0])) * max(0.0, float(b[3]) - float(b[1])) for b in boxes]
    return max(range(len(boxes)), key=lambda i: (areas[i], float(scores[i])))


def to_bgr_uint8(image: torch.Tensor) -> torch.Tensor:
    """One ComfyUI IMAGE (H, W, C) in 0..1 as InsightFace reads images: (H, W, 3) uint8, BGR.

    Values are rounded (an image loaded from an 8-bit file comes back exactly); alpha is dropped, grey is repeated.
    """
    if image.dim() != 3:
        raise ValueError(f"expected one image (H, W, C), got shape {tuple(image.shape)}")
    rgb = image[..., :_CHANNELS] if image.shape[-1] >= _CHANNELS else image[..., :1].expand(*image.shape[:2], 3)
    levels = (rgb.float().clamp(0.0, 1.0) * _MAX_LEVEL).round().to(torch.uint8)
    return levels.flip(-1).contiguous()


def from_bgr_uint8(image: torch.Tensor) -> torch.Tensor:
    """An InsightFace image or crop (H, W, 3) uint8 BGR as a ComfyUI IMAGE (H, W, 3) float in 0..1, RGB."""
    return image.flip(-1).float() / _MAX_LEVEL
