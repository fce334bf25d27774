"""The paper's two metrics on CLIP embeddings (arXiv 2308.06721 §4.2.1), pure torch.

CLIP-I: cosine similarity of the image embeddings of a generated image and its image prompt.
CLIP-T: CLIPScore (Hessel et al. 2021) of a generated image against the caption of its image prompt,
`w * max(cos, 0)` with w = 2.5. The paper does not state w; its CLIP-T values (0.42 - 0.61) fit w = 2.5 and not raw
cosines (training.md §2), so the raw mean cosine is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: CLIPScore's rescaling weight (Hessel et al. 2021).
CLIPSCORE_W = 2.5


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity in float64. a, b: (N, D). Returns (N,)."""
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor, w: float = CLIPSCORE_W) -> torch.Tensor:
    """CLIPScore per pair, `w * max(cos(image, text), 0)`. Inputs (N, D); returns (N,)."""
    return w * cosine(image_embeds, text_embeds).clamp(min=0)


@dataclass(frozen=True)
class Scores:
    """Mean metrics over every generated image, and the per-image values they average.

    Attributes:
        clip_t: mean CLIPScore (w * max(cos, 0)) against the reference's caption.
        clip_i: mean cosine similarity to the reference image.
        clip_t_cosine: mean raw cosine to the caption (CLIP-T without CLIPScore's rescaling).
        per_image_t, per_image_i: Shape: (N,) each, float64.
    """

    clip_t: float
    clip_i: float
    clip_t_cosine: float
    per_image_t: torch.Tensor
    per_image_i: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.per_image_t.shape[0])


def score(generated: torch.Tensor, references: torch.Tensor, captions: torch.Tensor,
          w: float = CLIPSCORE_W) -> Scores:
    """CLIP-T and CLIP-I of N generated images.

    Args:
        generated: image embeddings of the generated images. Shape: (N, D).
        references: image embeddings of each one's image prompt (repeated per generated image). Shape: (N, D).
        captions: text embeddings of each one's caption. Shape: (N, D).
    """
    if not generated.shape == references.shape == captions.shape or generated.ndim != 2 or not len(generated):
        raise ValueError(f"expected three (N, D) embeddings, got {tuple(generated.shape)}, "
                         f"{tuple(references.shape)}, {tuple(captions.shape)}")
    t_cos = cosine(generated, captions)
    per_t, per_i = w * t_cos.clamp(min=0), cosine(generated, references)
    return Scores(float(per_t.mean()), float(per_i.mean()), float(t_cos.mean()), per_t, per_i)
