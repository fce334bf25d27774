"""The frozen encoders' side of a training step: latents, text conditioning, image-encoder features.

SD1.5-like models condition on the last hidden state of one CLIP text encoder. SDXL concatenates the penultimate
hidden states of both text encoders, adds the second encoder's pooled (projected) embedding and the time ids
(original size, crop top-left, target size) through `added_cond_kwargs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..spec import ClipOutput
from .models import BaseModel, ImageEncoder

PENULTIMATE = -2


@dataclass(frozen=True)
class TextConditioning:
    """Shapes: context (B, L, cross_attention_dim); `added` holds SDXL's text_embeds (B, P) and time_ids (B, 6)."""

    context: torch.Tensor
    added: dict[str, torch.Tensor] | None


def encode_latents(base: BaseModel, pixels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """VAE posterior sample `mean + std * eps` (the draw given per sample), shifted and scaled as the model's VAE
    config says. pixels: (B, 3, R, R) in [-1, 1]; eps: (B, C, R/f, R/f). Returns float32 latents of eps's shape."""
    vae = base.vae
    posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
    latents = posterior.mean.float() + posterior.std.float() * eps
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def time_ids(original_size: torch.Tensor, crop_top_left: torch.Tensor, resolution: int) -> torch.Tensor:
    """SDXL micro-conditioning (h, w, top, left, target h, target w). Inputs (B, 2) each; returns (B, 6) float."""
    target = torch.full_like(original_size, resolution)
    return torch.cat([original_size, crop_top_left, target], dim=1).float()


def encode_text(base: BaseModel, input_ids: torch.Tensor, sizes: tuple[torch.Tensor, torch.Tensor] | None,
                resolution: int) -> TextConditioning:
    """input_ids: (B, encoders, L). `sizes` = (original_size, crop_top_left), used for SDXL only."""
    encoders = base.text_encoders
    if not base.is_sdxl:
        return TextConditioning(encoders[0](input_ids[:, 0].to(encoders[0].device))[0], None)
    hidden, pooled = [], None
    for i, encoder in enumerate(encoders):
        out = encoder(input_ids[:, i].to(encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[PENULTIMATE])
        pooled = out[0]  # the last encoder's projected pooled embedding (text_embeds)
    ids = time_ids(*sizes, resolution).to(pooled.device)
    return TextConditioning(torch.cat(hidden, dim=-1), {"text_embeds": pooled, "time_ids": ids.to(pooled.dtype)})


def encode_image(encoder: ImageEncoder, pixels: torch.Tensor, output: ClipOutput,
                 drop_image: torch.Tensor) -> torch.Tensor:
    """The CLIP output the projection consumes. pixels: (B, 3, S, S). Base adapters drop an image by zeroing its
    image_embeds (B, E); Plus adapters got zero pixels from the dataset and use hidden_states[-2] (B, T, H)."""
    model = encoder.model
    hidden = output is ClipOutput.HIDDEN_STATES
    out = model(pixel_values=pixels.to(model.device, model.dtype), output_hidden_states=hidden)
    if hidden:
        return out.hidden_states[PENULTIMATE]
    keep = (~drop_image.to(out.image_embeds.device)).to(out.image_embeds.dtype)
    return out.image_embeds * keep[:, None]
