"""FaceID image tokens: identity embeddings (plus, for FaceID Plus / Plus v2, the CLIP hidden states of the aligned
face crops) projected by a FaceID adapter, and the reference negative.

The negative follows the official code and diffusers: a zero identity embedding and, for Plus, the CLIP encoding of
an all-zero normalised pixel tensor (checkpoints.md §9). Several faces combine before projection like CLIP
encodings do (`encoding.combine`); with `concat` every face keeps its tokens and they are joined explicitly on the
token axis (portrait: 16 per face), so one softmax spans all of them.
"""

from __future__ import annotations

from typing import Callable

import torch

from .adapter import IPAdapter
from .encoding import ClipEncoding, ImagePrompt, combine
from .errors import IncompatibleEncodingError


def _check(adapter: IPAdapter, prompt: ImagePrompt) -> None:
    spec, name = adapter.spec, adapter.name
    if not spec.is_faceid:
        raise IncompatibleEncodingError(
            f"'{name}' is a {spec.kind} adapter, not a FaceID one; use Apply IP-Adapter for it.")
    if prompt.face is None:
        raise IncompatibleEncodingError(
            f"'{name}' is a {spec.kind} adapter: it needs InsightFace identity embeddings, which this image prompt "
            "lacks. Connect the face_prompt input to Encode Face Prompt.")
    if spec.clip_output is not None and prompt.positive.hidden_states is None:
        raise IncompatibleEncodingError(
            f"'{name}' ({spec.kind}) also needs the aligned face crops encoded by CLIP vision ({spec.encoder}). "
            "Connect a CLIP Vision loader with that model to the clip_vision input of Encode Face Prompt.")


def _as_clip_slots(adapter: IPAdapter, prompt: ImagePrompt) -> ImagePrompt:
    """The identity embeddings in the `image_embeds` slot (the CLIP hidden states, if used, in theirs), so that
    `combine` treats faces exactly as it treats CLIP encodings. Negative: zero identity."""
    ids = prompt.face.for_kind(adapter.spec.kind)
    uses_clip = adapter.spec.clip_output is not None
    positive = ClipEncoding(ids, prompt.positive.hidden_states if uses_clip else None)
    negative = ClipEncoding(torch.zeros_like(ids[:1]), prompt.negative.hidden_states if uses_clip else None)
    return ImagePrompt(positive, negative)


def faceid_tokens(adapter: IPAdapter, prompt: ImagePrompt, method: str, s_scale: float = 1.0,
                  project: Callable[..., torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative FaceID tokens, every face joined on the token axis.

    Args:
        adapter: a FaceID adapter (any kind of the family).
        prompt: a face prompt from Encode Face Prompt: `face` set; for Plus kinds the crops' CLIP encodings.
        method: how several faces combine (`encoding.COMBINE_METHODS`).
        s_scale: the Plus v2 shortcut scale (`weight_faceidv2`); ignored by the other kinds.
        project: `adapter.project` or a wrapper with its keywords (the host passes one that loads the adapter on
            its device first); default `adapter.project`.

    Returns:
        (positive, negative). Shapes: (1, n * T, C), n the faces left after combining, T the adapter's tokens.

    Raises:
        IncompatibleEncodingError: not a FaceID adapter, a prompt without face embeddings, or a Plus adapter given a
            prompt without CLIP encodings (each message says what to connect).
    """
    _check(adapter, prompt)
    combined = combine(_as_clip_slots(adapter, prompt), method)
    width = adapter.spec.cross_attention_dim
    project = adapter.project if project is None else project
    with torch.no_grad():
        tokens = [project(clip=enc.hidden_states, face_id=enc.image_embeds, s_scale=s_scale)
                  for enc in (combined.positive, combined.negative)]
    return tokens[0].reshape(1, -1, width), tokens[1].reshape(1, -1, width)
