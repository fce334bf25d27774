"""One training step's loss: frozen encoders under no_grad, then the adapter-patched UNet and epsilon MSE.

`latents = VAE(x).sample * scale`, `noise ~ N(0, I)`, `t ~ U{0..T-1}`, `noisy = add_noise(latents, noise, t)`,
`loss = mse(UNet(noisy, t, [text; image tokens]), noise)` (training.md §1), with every draw made per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..spec import ClipOutput
from .conditioning import encode_image, encode_latents, encode_text
from .models import BaseModel, ImageEncoder
from .recipe import diffusion_loss, diffusion_target, sample_noise


@dataclass(frozen=True)
class StepContext:
    """What a step needs besides the batch: the frozen models, the CLIP output the projection reads and the
    training resolution."""

    base: BaseModel
    encoder: ImageEncoder
    clip_output: ClipOutput
    resolution: int

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent: the VAE halves the image once per level after the first."""
        vae = self.base.vae.config
        side = self.resolution // 2 ** (len(vae.block_out_channels) - 1)
        return vae.latent_channels, side, side


def step_inputs(batch: dict[str, torch.Tensor], ctx: StepContext, device: torch.device) -> dict:
    """The frozen encoders' outputs for `batch` (no gradients): the arguments of the adapter module's forward, plus
    the loss target."""
    scheduler = ctx.base.scheduler
    with torch.no_grad():
        draws = sample_noise(batch["seed"], ctx.latent_shape, scheduler.config.num_train_timesteps, device)
        latents = encode_latents(ctx.base, batch["pixels"].to(device), draws.latent_eps)
        noisy = scheduler.add_noise(latents, draws.noise, draws.timesteps)
        sizes = (batch["original_size"].to(device), batch["crop_top_left"].to(device))
        text = encode_text(ctx.base, batch["input_ids"], sizes, ctx.resolution)
        clip = encode_image(ctx.encoder, batch["clip_pixels"], ctx.clip_output, batch["drop_image"])
        target = diffusion_target(scheduler, latents, draws.noise, draws.timesteps)
    return {"noisy": noisy, "timesteps": draws.timesteps, "text": text.context, "clip": clip,
            "added_cond_kwargs": text.added, "target": target}


def step_loss(module, batch: dict[str, torch.Tensor], ctx: StepContext, device: torch.device) -> torch.Tensor:
    """The mean epsilon-MSE of `batch` through `module` (the prepared TrainableAdapter)."""
    inputs = step_inputs(batch, ctx, device)
    target = inputs.pop("target")
    return diffusion_loss(module(**inputs), target)
