"""The paper's training recipe as data and small pure functions: optimiser settings, the classifier-free-guidance
drops, per-sample randomness and the loss.

Every random quantity of a sample (its drop draw, VAE sample, noise and timestep) comes from a seed derived from the
run's seed, the epoch and the sample's identity. The result does not depend on how samples are spread over
processes, on the order batches run in, or on where a run was interrupted: one process and several processes with
the same global batch train the same adapter, and a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: AdamW settings of the paper and the official scripts (constant rate, no warmup, no clipping).
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 1e-2
#: Probability of each drop: image only, text only, both (one uniform draw per sample).
DROP_RATE = 0.05
SEED_BITS = 63


@dataclass(frozen=True)
class DropRates:
    """Classifier-free-guidance drop probabilities; their sum is the chance a sample is changed at all."""

    image: float = DROP_RATE
    text: float = DROP_RATE
    both: float = DROP_RATE

    def __post_init__(self) -> None:
        if min(self.image, self.text, self.both) < 0 or self.image + self.text + self.both > 1:
            raise ValueError(f"drop rates must be >= 0 and sum to at most 1, got {self}")


@dataclass(frozen=True)
class Drop:
    """What one sample loses: its image prompt (zero CLIP embedding / zero pixels), its caption (""), or both."""

    image: bool
    text: bool


def drop_for(r: float, rates: DropRates) -> Drop:
    """The drop for a uniform draw `r` in [0, 1): [0, image) drops the image, the next `text` the caption, the next
    `both` both (the official scripts' order), anything above keeps the sample as it is."""
    if r < rates.image:
        return Drop(image=True, text=False)
    if r < rates.image + rates.text:
        return Drop(image=False, text=True)
    if r < rates.image + rates.text + rates.both:
        return Drop(image=True, text=True)
    return Drop(image=False, text=False)


def sample_seed(seed: int, epoch: int, identity: str) -> int:
    """A 63-bit seed for one sample in one epoch; `identity` is stable across runs (file path, manifest line,
    shard/key), so the same sample gets the same randomness wherever and whenever it is processed."""
    digest = hashlib.blake2b(f"{seed}\x00{epoch}\x00{identity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def drop_draw(seed: int) -> float:
    """The sample's uniform draw for `drop_for` (independent of the torch draws made from the same seed)."""
    return random.Random(seed).random()


@dataclass(frozen=True)
class SampleNoise:
    """Per-sample randomness of one batch, on the batch's device.

    Attributes:
        timesteps: training timesteps. Shape: (B,), int64.
        noise: the diffusion noise. Shape: (B, C, h, w) like the latents.
        latent_eps: the VAE posterior's standard normal draw. Shape: (B, C, h, w).
    """

    timesteps: torch.Tensor
    noise: torch.Tensor
    latent_eps: torch.Tensor


def sample_noise(seeds: torch.Tensor, latent_shape: tuple[int, ...], num_timesteps: int,
                 device: torch.device | str) -> SampleNoise:
    """Draw every sample's timestep, noise and VAE draw from its own generator.

    Args:
        seeds: one seed per sample (from `sample_seed`). Shape: (B,).
        latent_shape: (C, h, w) of one latent.
        num_timesteps: the scheduler's training timesteps (timesteps are uniform on 0..num_timesteps-1).
    """
    steps, noises, eps = [], [], []
    for seed in seeds.tolist():
        g = torch.Generator().manual_seed(int(seed))
        steps.append(torch.randint(0, num_timesteps, (1,), generator=g))
        noises.append(torch.randn(latent_shape, generator=g))
        eps.append(torch.randn(latent_shape, generator=g))
    return SampleNoise(torch.cat(steps).to(device), torch.stack(noises).to(device), torch.stack(eps).to(device))


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict: the noise (epsilon models, the paper's case) or the velocity (v-prediction)."""
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported scheduler prediction_type '{prediction}' (epsilon or v_prediction)")


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32, averaged over every element of the batch."""
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")
