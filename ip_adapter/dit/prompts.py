"""What a DiT adapter reads from an image prompt: its encoder output, the family's reference negative, and a check
that the images were encoded by the encoder the adapter was trained with.

Reference negatives (used when no negative image was given): XLabs' FLUX.1 pipelines encode an all-black image
(x-flux, diffusers `FluxPipeline`); InstantX's SD3.5 pipeline feeds zeros in place of the SigLIP features
(diffusers `StableDiffusion3Pipeline`).
"""

from __future__ import annotations

import torch

from ..adapter import IPAdapter
from ..encoding import ImagePrompt
from ..errors import IncompatibleEncodingError
from ..layout import BaseFamily
from ..spec import ENCODER_FILES
from .layout import DIT_LAYOUTS

#: Hidden-state token counts of encoders that share a width with the expected one, for messages.
KNOWN_TOKEN_COUNTS = {257: "224 px", 577: "336 px", 729: "384 px", 1024: "512 px"}


def dit_features(adapter: IPAdapter, prompt: ImagePrompt) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative encoder outputs for `adapter`, one entry per image.

    Returns:
        Shapes: (N, E) image_embeds (XLabs) or (N, T, E) hidden states (InstantX).
    """
    spec = adapter.spec
    positive = prompt.positive.output(spec.clip_output)
    check_encoding(adapter, prompt)
    if not prompt.default_negative:
        return positive, prompt.negative.output(spec.clip_output)
    if spec.family is BaseFamily.FLUX:
        return positive, prompt.black_image.output(spec.clip_output)
    return positive, torch.zeros_like(positive)


def check_encoding(adapter: IPAdapter, prompt: ImagePrompt) -> None:
    """Raise IncompatibleEncodingError, naming both encoders, unless the prompt comes from the adapter's encoder."""
    spec, layout = adapter.spec, DIT_LAYOUTS[adapter.spec.family]
    adapter.check_clip_input(prompt.positive.output(spec.clip_output), spec.clip_output)
    hidden = prompt.positive.hidden_states
    if hidden is None or hidden.shape[1] == layout.encoder_tokens:
        return
    found = KNOWN_TOKEN_COUNTS.get(hidden.shape[1], f"{hidden.shape[1]} tokens")
    expected = KNOWN_TOKEN_COUNTS[layout.encoder_tokens]
    raise IncompatibleEncodingError(
        f"'{adapter.name}' ({spec.family.value} {spec.kind}) was trained with {layout.encoder} at {expected} "
        f"({layout.encoder_tokens} tokens), but the image prompt was encoded at {found} ({hidden.shape[1]} tokens). "
        f"Load {ENCODER_FILES.get(layout.encoder, layout.encoder)} in the Load CLIP Vision node.")


