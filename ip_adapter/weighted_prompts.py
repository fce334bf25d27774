"""Several image prompts, each with its weight, merged into one in CLIP space (before any adapter's projection)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .encoding import COMBINE_METHODS, ClipEncoding, ImagePrompt, combine, fit_images
from .errors import IncompatibleEncodingError, InvalidOptionError
from .face import FaceEmbeds

#: Combine Image Prompts' methods: Apply IP-Adapter's plus element-wise max and min.
PROMPT_COMBINE_METHODS = COMBINE_METHODS + ("max", "min")


def _widths(encoding: ClipEncoding) -> tuple[int, int | None]:
    hidden = encoding.hidden_states
    return encoding.image_embeds.shape[-1], None if hidden is None else hidden.shape[-1]


def _check_same_encoder(prompts: Sequence[ImagePrompt], labels: Sequence[str]) -> None:
    first = _widths(prompts[0].positive)
    for prompt, label in zip(prompts[1:], labels[1:]):
        found = _widths(prompt.positive)
        if found[0] != first[0] or (None not in (found[1], first[1]) and found[1] != first[1]):
            raise IncompatibleEncodingError(
                f"{label} was encoded with another CLIP vision model than {labels[0]} (image_embeds / hidden widths "
                f"{found[0]} / {found[1]} against {first[0]} / {first[1]}). Encode every reference with the same "
                "CLIP vision model (the one the adapter expects).")


def _concat(encodings: Sequence[ClipEncoding]) -> ClipEncoding:
    embeds = torch.cat([e.image_embeds for e in encodings])
    if any(e.hidden_states is None for e in encodings):
        return ClipEncoding(embeds, None)  # a prompt without hidden states: only base adapters can use the result
    return ClipEncoding(embeds, torch.cat([e.hidden_states for e in encodings]))


def combine_weighted(prompts: Sequence[ImagePrompt], weights: Sequence[float], method: str,
                     labels: Sequence[str] | None = None) -> ImagePrompt:
    """Scale each prompt's positive encodings by its weight, then combine every image with `method`.

    The images of all prompts are joined in order (prompt 1's first); "concat" keeps them all, so their tokens later
    attend jointly (one softmax); the other methods reduce them to one image exactly as Apply IP-Adapter's
    `combine_images` does. Each prompt's negatives are first fitted to its own image count, so the negative side
    always follows the positive one image for image. Weights never touch the negatives.

    Args:
        prompts: one or more image prompts from the same CLIP vision model.
        weights: one per prompt (negative weights flip the direction in CLIP space).
        method: one of PROMPT_COMBINE_METHODS.
        labels: names for error messages (e.g. the node's input names).

    Raises:
        IncompatibleEncodingError: the prompts come from different CLIP vision models.
    """
    if method not in PROMPT_COMBINE_METHODS:
        raise InvalidOptionError(f"Unknown method '{method}'; choose one of {', '.join(PROMPT_COMBINE_METHODS)}.")
    labels = list(labels or (f"image prompt {i + 1}" for i in range(len(prompts))))
    _check_same_encoder(prompts, labels)
    positive = _concat([p.positive.map(lambda t, w=w: t * w) for p, w in zip(prompts, weights)])
    negative = _concat([p.negative.map(lambda t, n=p.num_images: fit_images(t, n)) for p in prompts])
    face = _faces(prompts, weights, method, labels)
    return combine(ImagePrompt(positive, negative, face, _black_images(prompts)), method)


def _black_images(prompts: Sequence[ImagePrompt]) -> ClipEncoding | None:
    """The FLUX.1 (XLabs) negative of the joined images: each prompt's black-image encoding where it has the default
    negative, its own negative images where the user gave some; None when no prompt has the default."""
    if all(p.black_image is None for p in prompts):
        return None
    sides = [p.black_image if p.black_image is not None else p.negative for p in prompts]
    return _concat([s.map(lambda t, n=p.num_images: fit_images(t, n)) for s, p in zip(sides, prompts)])


def _faces(prompts: Sequence[ImagePrompt], weights: Sequence[float], method: str,
           labels: Sequence[str]) -> FaceEmbeds | None:
    """Face prompts join their identities (one per image, in order); mixing them with plain image prompts, weighting
    them or reducing them here is refused (Apply IP-Adapter FaceID has the weight and the reducers)."""
    faces = [p.face for p in prompts]
    if all(f is None for f in faces):
        return None
    plain = [label for f, label in zip(faces, labels) if f is None]
    if plain:
        raise IncompatibleEncodingError(
            f"{', '.join(plain)} {'is' if len(plain) == 1 else 'are'} not a face prompt but others are. Combine face "
            "prompts (from Encode Face Prompt) only with face prompts.")
    weighted = [label for w, label in zip(weights, labels) if w != 1.0]
    if weighted or method != "concat":
        raise InvalidOptionError(
            "Face prompts are combined with method 'concat' and weight 1 only (the identity embedding is "
            "normalised, so a weight would not reach it). Set the identity's strength with Apply IP-Adapter "
            "FaceID's weight, and reduce several faces there with combine_images.")
    return FaceEmbeds(torch.cat([f.raw for f in faces]))
