"""Image prompts: CLIP-vision encodings of reference images (positive) and their unconditional counterparts
(negative), adapter independent, and the ways several images combine before projection."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from .errors import InvalidOptionError
from .face import FaceEmbeds
from .spec import ClipOutput

COMBINE_METHODS = ("concat", "add", "subtract", "average", "norm average")


@dataclass(frozen=True)
class ClipEncoding:
    """CLIP-vision outputs of N images.

    Attributes:
        image_embeds: pooled, projected CLS embeddings. Shape: (N, P).
        hidden_states: penultimate encoder layer, every token. Shape: (N, T, H); None if not kept.
    """

    image_embeds: torch.Tensor
    hidden_states: torch.Tensor | None

    @property
    def num_images(self) -> int:
        return self.image_embeds.shape[0]

    def output(self, which: ClipOutput) -> torch.Tensor | None:
        """The tensor a projection consumes."""
        return self.image_embeds if which is ClipOutput.IMAGE_EMBEDS else self.hidden_states

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ClipEncoding:
        """Apply `fn` to every tensor (image axis first)."""
        hidden = None if self.hidden_states is None else fn(self.hidden_states)
        return ClipEncoding(fn(self.image_embeds), hidden)


@dataclass(frozen=True)
class ImagePrompt:
    """The `IMAGE_PROMPT` value: positive encodings of the reference images and the negative (unconditional) ones.

    The reference convention for the negative is zeros for `image_embeds` and the encoding of an all-zero
    *normalised* pixel tensor for `hidden_states` (what the adapters saw when the image was dropped in training).

    Face prompts (Encode Face Prompt) also carry `face`, the InsightFace identity embeddings of the same N images,
    and their CLIP encodings are those of the aligned face crops (empty, width 0, without a CLIP vision model).

    Attributes:
        positive: the reference images' encodings.
        negative: the unconditional encodings (the convention above, or a user's negative images).
        face: the face identity embeddings of face prompts, else None.
        black_image: the encoding of one all-black image, kept only when `negative` is the default (no negative image
            was given): XLabs' FLUX.1 adapters use it as their reference negative.
    """

    positive: ClipEncoding
    negative: ClipEncoding
    face: FaceEmbeds | None = None
    black_image: ClipEncoding | None = None

    @property
    def num_images(self) -> int:
        return self.positive.num_images

    @property
    def default_negative(self) -> bool:
        """Whether the negative is the reference default rather than encoded negative images."""
        return self.black_image is not None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ImagePrompt:
        def move(e: ClipEncoding | FaceEmbeds | None) -> ClipEncoding | FaceEmbeds | None:
            return None if e is None else e.map(lambda t: t.to(device=device, dtype=dtype))

        return ImagePrompt(move(self.positive), move(self.negative), move(self.face), move(self.black_image))


def fit_images(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat the last image or drop the surplus so that `t` has exactly `n` images (axis 0)."""
    if t.shape[0] >= n:
        return t[:n]
    return torch.cat([t, t[-1:].expand(n - t.shape[0], *t.shape[1:])], dim=0)


def _subtract(t: torch.Tensor) -> torch.Tensor:
    rest = t[1:].mean(dim=0, keepdim=True) if t.shape[0] > 1 else torch.zeros_like(t[:1])
    return t[:1] - rest


def _norm_average(t: torch.Tensor) -> torch.Tensor:
    # Element-wise norm across the image axis (not a per-vector L2), as users of the peer pack know it. One image
    # passes unchanged: normalising it by itself would leave only its signs.
    if t.shape[0] == 1:
        return t
    return (t / torch.linalg.vector_norm(t, dim=0, keepdim=True)).mean(dim=0, keepdim=True)


_REDUCERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "add": lambda t: t.sum(dim=0, keepdim=True),
    "subtract": _subtract,
    "average": lambda t: t.mean(dim=0, keepdim=True),
    "norm average": _norm_average,
}


def combine(prompt: ImagePrompt, method: str) -> ImagePrompt:
    """Combine several reference images in CLIP space before projection.

    "concat" keeps them all (their tokens later attend jointly, one softmax) and fits the negative to the same
    count; the other methods reduce the positive to one image and keep the first negative.
    """
    black = prompt.black_image
    if method == "concat":
        n = prompt.num_images
        fit = lambda t: fit_images(t, n)  # noqa: E731
        return replace(prompt, negative=prompt.negative.map(fit), black_image=black and black.map(fit))
    if method not in _REDUCERS:
        raise InvalidOptionError(f"Unknown combine method '{method}'; choose one of {', '.join(COMBINE_METHODS)}.")
    first = lambda t: t[:1]  # noqa: E731
    return replace(prompt, positive=prompt.positive.map(_REDUCERS[method]), negative=prompt.negative.map(first),
                   black_image=black and black.map(first))
