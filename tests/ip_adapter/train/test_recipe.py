"""The recipe's random parts: one uniform draw per sample decides the drop (image / text / both at 0.05 each), and
every per-sample draw depends only on (seed, epoch, sample identity)."""

from __future__ import annotations

import math

import pytest
import torch

from ip_adapter.train.recipe import (
    DROP_RATE,
    Drop,
    DropRates,
    diffusion_loss,
    diffusion_target,
    drop_draw,
    drop_for,
    sample_noise,
    sample_seed,
)

DRAWS = 40_000
#: Five standard deviations of a 0.05 frequency over DRAWS samples (the draws are fixed, so this never flakes).
FREQ_TOL = 5 * math.sqrt(DROP_RATE * (1 - DROP_RATE) / DRAWS)


@pytest.mark.parametrize(("r", "image", "text"), [
    (0.0, True, False), (0.0499, True, False), (0.05, False, True), (0.0999, False, True), (0.1, True, True),
    (0.1499, True, True), (0.1501, False, False), (0.99, False, False)])
def test_one_draw_decides_the_drop_in_the_official_order(r: float, image: bool, text: bool) -> None:
    assert drop_for(r, DropRates()) == Drop(image=image, text=text)


def test_drop_frequencies_are_the_papers() -> None:
    drops = [drop_for(drop_draw(sample_seed(0, 0, f"img{i}.png")), DropRates()) for i in range(DRAWS)]
    freq = {kind: sum(d == kind for d in drops) / DRAWS for kind in
            (Drop(True, False), Drop(False, True), Drop(True, True), Drop(False, False))}
    for kind in (Drop(True, False), Drop(False, True), Drop(True, True)):
        assert abs(freq[kind] - DROP_RATE) < FREQ_TOL, (kind, freq[kind])
    assert abs(freq[Drop(False, False)] - (1 - 3 * DROP_RATE)) < 2 * FREQ_TOL


def test_drop_rates_are_validated() -> None:
    with pytest.raises(ValueError):
        DropRates(0.5, 0.4, 0.2)
    with pytest.raises(ValueError):
        DropRates(-0.1)


def test_sample_seeds_depend_on_seed_epoch_and_identity_only() -> None:
    seed = sample_seed(3, 1, "a.png")
    assert seed == sample_seed(3, 1, "a.png") and 0 <= seed < 2**63
    assert len({seed, sample_seed(4, 1, "a.png"), sample_seed(3, 2, "a.png"), sample_seed(3, 1, "b.png")}) == 4


def test_each_samples_noise_ignores_the_rest_of_its_batch() -> None:
    seeds = torch.tensor([sample_seed(0, 0, "a"), sample_seed(0, 0, "b")])
    pair = sample_noise(seeds, (4, 8, 8), 1000, "cpu")
    alone = sample_noise(seeds[1:], (4, 8, 8), 1000, "cpu")
    assert torch.equal(pair.noise[1:], alone.noise) and torch.equal(pair.latent_eps[1:], alone.latent_eps)
    assert torch.equal(pair.timesteps[1:], alone.timesteps)
    assert not torch.equal(pair.noise[0], pair.noise[1]) and not torch.equal(pair.noise[0], pair.latent_eps[0])


def test_timesteps_cover_the_training_range() -> None:
    seeds = torch.tensor([sample_seed(0, 0, str(i)) for i in range(2000)])
    t = sample_noise(seeds, (1, 1, 1), 1000, "cpu").timesteps
    assert t.min() >= 0 and t.max() <= 999 and t.min() < 10 and t.max() > 989


def test_loss_is_mean_squared_error_and_targets_follow_the_scheduler() -> None:
    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(0)
    pred, noise, latents = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    assert diffusion_loss(pred, noise).item() == pytest.approx(((pred - noise) ** 2).double().mean().item(), 1e-6)
    t = torch.tensor([10, 500])
    eps = DDPMScheduler(num_train_timesteps=1000)
    assert diffusion_target(eps, latents, noise, t) is noise
    v = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    a = v.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - v.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(diffusion_target(v, latents, noise, t), a * noise - s * latents, atol=1e-6)
