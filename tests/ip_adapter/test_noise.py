"""Negative Image Noise: every type deterministic by seed, strength 0 is the identity, and each type does what it
says (measured), blur equals torchvision's Gaussian blur."""

from __future__ import annotations

import pytest
import torch

from ip_adapter import InvalidOptionError
from ip_adapter.noise import DEFAULT_SIDE, NOISE_TYPES, gaussian_blur, negative_noise

SIDE = 64
SHARE_TOLERANCE = 0.05


def _image(seed: int = 0, batch: int = 2, channels: int = 3) -> torch.Tensor:
    return torch.rand(batch, SIDE, SIDE, channels, generator=torch.Generator().manual_seed(seed))


def test_types_follow_the_contract() -> None:
    assert NOISE_TYPES == ("fade", "dissolve", "gaussian", "shuffle")


@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_same_seed_same_image_other_seed_other_image(kind: str) -> None:
    a, b = negative_noise(kind, 0.5, 2, 7, _image()), negative_noise(kind, 0.5, 2, 7, _image())
    assert torch.equal(a, b)
    assert not torch.equal(a, negative_noise(kind, 0.5, 2, 8, _image()))
    assert a.shape == (2, SIDE, SIDE, 3) and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_strength_zero_without_blur_returns_the_image(kind: str) -> None:
    image = _image()
    assert torch.equal(negative_noise(kind, 0.0, 0, 3, image), image)


def test_without_an_image_the_base_is_a_black_square() -> None:
    assert torch.equal(negative_noise("fade", 0.0, 0, 0), torch.zeros(1, DEFAULT_SIDE, DEFAULT_SIDE, 3))
    assert torch.equal(negative_noise("shuffle", 1.0, 0, 0), torch.zeros(1, DEFAULT_SIDE, DEFAULT_SIDE, 3))


def test_alpha_is_dropped() -> None:
    assert negative_noise("fade", 0.5, 0, 0, _image(channels=4)).shape[-1] == 3


def test_full_fade_is_pure_noise_whatever_the_image() -> None:
    assert torch.equal(negative_noise("fade", 1.0, 0, 5, _image(1)), negative_noise("fade", 1.0, 0, 5, _image(2)))


def test_dissolve_replaces_the_requested_share_of_pixels() -> None:
    image = _image()
    out = negative_noise("dissolve", 0.3, 0, 1, image)
    changed = (out != image).any(dim=-1).float().mean()
    assert abs(changed - 0.3) < SHARE_TOLERANCE


def test_gaussian_adds_noise_of_the_requested_deviation() -> None:
    grey = torch.full((1, SIDE, SIDE, 3), 0.5)
    deviation = (negative_noise("gaussian", 0.1, 0, 1, grey) - grey).std()
    assert abs(deviation - 0.1) < 0.01


def test_shuffle_moves_pixels_but_keeps_their_colours() -> None:
    image = _image()
    out = negative_noise("shuffle", 0.5, 0, 1, image)
    for i in range(image.shape[0]):
        before, after = image[i].reshape(-1, 3), out[i].reshape(-1, 3)
        assert torch.equal(before[before[:, 0].argsort()], after[after[:, 0].argsort()])
        moved = (before != after).any(dim=-1).float().mean()
        assert abs(moved - 0.5) < SHARE_TOLERANCE


@pytest.mark.parametrize("radius", [1, 3, 8])
def test_blur_equals_torchvision_gaussian_blur(radius: int) -> None:
    from torchvision.transforms.functional import gaussian_blur as reference

    image = _image(batch=1)
    expected = reference(image.permute(0, 3, 1, 2), [2 * radius + 1] * 2, [radius / 3.0] * 2).permute(0, 2, 3, 1)
    assert (gaussian_blur(image, radius) - expected).abs().max() <= 1e-6


def test_blur_zero_is_the_identity_and_tiny_images_still_blur() -> None:
    image = _image()
    assert gaussian_blur(image, 0) is image
    tiny = torch.rand(1, 3, 3, 3)
    assert gaussian_blur(tiny, 8).shape == tiny.shape


def test_unknown_type_is_an_option_error() -> None:
    with pytest.raises(InvalidOptionError, match="dissolve"):
        negative_noise("salt", 1.0, 0, 0)
