"""ApplyIPAdapterBatch: image i of the prompt conditions latent frame i (animations), with per-frame weights and
masks; under context windows frame i is latent frame i of the whole batch."""

from __future__ import annotations

from typing import Sequence

import torch

from ..ip_adapter import ImagePrompt, IncompatibleEncodingError, InvalidOptionError
from ..ip_adapter.encoding import fit_images
from ..ip_adapter.entry import check_window
from ..ip_adapter.scaling import check_embeds_scaling
from .apply_ip_adapter import ApplyIPAdapter, apply_tokens
from .loaded import LoadedAdapter, project
from .model_checks import check_model

#: Frames projected per pass: long animations never hold every frame's projection activations at once.
PROJECT_CHUNK = 64
BATCH_INPUTS = ("model", "ipadapter", "image_prompt", "weight", "weight_type", "start_at", "end_at", "embeds_scaling")


def _project_frames(loaded: LoadedAdapter, clip: torch.Tensor) -> torch.Tensor:
    """Tokens of each image, PROJECT_CHUNK images per pass. clip: (N, ...) -> (N, T, cross_attention_dim)."""
    return torch.cat([project(loaded, clip=part) for part in torch.split(clip, PROJECT_CHUNK)])


def frame_tokens(loaded: LoadedAdapter, prompt: ImagePrompt) -> tuple[torch.Tensor, torch.Tensor]:
    """One positive row per image (frame), and the negatives: one shared row, or one per frame.

    Returns:
        positive (N, T, C), negative (1 or N, T, C).
    """
    adapter = loaded.adapter
    if adapter.spec.is_faceid:
        raise IncompatibleEncodingError(
            f"'{adapter.name}' is a {adapter.spec.kind} adapter: it needs InsightFace face embeddings, which "
            "Encode Image Prompt does not produce. Use a non-FaceID adapter with this node.")
    n, which = prompt.num_images, adapter.spec.clip_output
    negative = prompt.negative.output(which)
    if negative.shape[0] not in (1, n):
        negative = fit_images(negative, n)
    return _project_frames(loaded, prompt.positive.output(which)), _project_frames(loaded, negative)


def check_frame_weights(frame_weights: Sequence[float] | None) -> tuple[float, ...] | None:
    """A FRAME_WEIGHTS value as a tuple of floats (a single number is one weight for every frame)."""
    if frame_weights is None:
        return None
    values = [frame_weights] if isinstance(frame_weights, (int, float)) else list(frame_weights)
    if not values or not all(isinstance(w, (int, float)) for w in values):
        raise InvalidOptionError(f"frame_weights must be a non-empty list of numbers (from Frame Weights); got "
                                 f"{str(frame_weights)[:80]}.")
    return tuple(float(w) for w in values)


class ApplyIPAdapterBatch:
    DESCRIPTION = (
        "Adds one reference image per latent frame, for animations: image i of the image prompt conditions frame i "
        "(fewer images than frames: the last one repeats). frame_weights (from Frame Weights) scale each frame's "
        "weight, a batch of masks maps frame by frame, and under context windows (the host's Context Windows, "
        "AnimateDiff's context options) frame i is always frame i of the whole batch. Each frame's image keys and "
        "values are computed once, not per step."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with one image prompt per frame patched in.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        base = ApplyIPAdapter.INPUT_TYPES()
        required = {name: base["required"][name] for name in BATCH_INPUTS}
        required["image_prompt"] = ("IMAGE_PROMPT", {"tooltip": "Image i conditions latent frame i (e.g. the frames "
                                    "of a reference video, encoded with a batch_size for long videos)."})
        return {
            "required": required,
            "optional": {
                "attn_mask": ("MASK", {"tooltip": "Where the image prompt acts, in the latent's aspect ratio; a batch "
                              "of masks maps frame by frame (the last repeats)."}),
                "frame_weights": ("FRAME_WEIGHTS", {"tooltip": "One multiplier of weight per frame, from Frame "
                                  "Weights (the last repeats); e.g. weights and weights_inverted for a cross-fade."}),
            },
        }

    def apply(self, model, ipadapter: LoadedAdapter, image_prompt: ImagePrompt, weight: float, weight_type: str,
              start_at: float, end_at: float, embeds_scaling: str, attn_mask: torch.Tensor | None = None,
              frame_weights: Sequence[float] | None = None) -> tuple:
        check_model(model, ipadapter.adapter)
        check_embeds_scaling(embeds_scaling)
        check_window(start_at, end_at)
        weights = check_frame_weights(frame_weights)
        if weight == 0:
            return (model.clone(),)
        positive, negative = frame_tokens(ipadapter, image_prompt)
        return (apply_tokens(model, ipadapter, positive, negative, weight, weight_type, start_at, end_at,
                             embeds_scaling, attn_mask, weights),)
