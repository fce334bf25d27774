"""Image preparation before the CLIP encoder: positional square crops, padding with the edge colour, and CAS
sharpening checked against a per-pixel float64 evaluation of the CAS formula."""

from __future__ import annotations

import pytest
import torch

from ip_adapter import InvalidOptionError
from ip_adapter.image_prep import CROP_MODES, cas_sharpen, crop_square, pad_square, square_for_encoder

EXACT = 1e-12


def _image(h: int, w: int, c: int = 3, batch: int = 2) -> torch.Tensor:
    """Every pixel distinct: value encodes (image, row, column, channel)."""
    return torch.arange(batch * h * w * c, dtype=torch.float64).reshape(batch, h, w, c) / (batch * h * w * c)


def test_crop_modes_follow_the_contract() -> None:
    assert CROP_MODES == ("center", "none", "top", "bottom", "left", "right", "pad")


@pytest.mark.parametrize(("position", "rows"), [("top", slice(0, 4)), ("bottom", slice(3, 7)),
                                                ("left", slice(1, 5)), ("right", slice(1, 5))])
def test_portrait_crops_pick_the_square_along_the_height(position: str, rows: slice) -> None:
    image = _image(7, 4)  # 3 spare rows; left/right centre them (rounding down, as the host's centre crop)
    assert torch.equal(crop_square(image, position), image[:, rows, :, :])


@pytest.mark.parametrize(("position", "cols"), [("left", slice(0, 5)), ("right", slice(4, 9)),
                                                ("top", slice(2, 7)), ("bottom", slice(2, 7))])
def test_landscape_crops_pick_the_square_along_the_width(position: str, cols: slice) -> None:
    image = _image(5, 9)
    assert torch.equal(crop_square(image, position), image[:, :, cols, :])


def test_pad_keeps_the_whole_image_and_extends_each_edge_with_its_mean_colour() -> None:
    image = _image(5, 8)  # 3 rows to add: 1 above, 2 below
    padded = pad_square(image)
    assert padded.shape == (2, 8, 8, 3)
    assert torch.equal(padded[:, 1:6], image)
    assert torch.allclose(padded[:, 0], image[:, 0].mean(dim=1, keepdim=True).expand(2, 8, 3), atol=EXACT)
    for row in (6, 7):
        assert torch.allclose(padded[:, row], image[:, -1].mean(dim=1, keepdim=True).expand(2, 8, 3), atol=EXACT)
    tall = pad_square(_image(6, 2))
    assert tall.shape == (2, 6, 6, 3) and torch.equal(tall[:, :, 2:4], _image(6, 2))
    assert torch.allclose(tall[:, :, 0], _image(6, 2)[:, :, 0].mean(dim=1, keepdim=True).expand(2, 6, 3))


def test_square_images_are_left_alone() -> None:
    image = _image(4, 4)
    assert pad_square(image) is image
    assert torch.equal(crop_square(image, "bottom"), image)


@pytest.mark.parametrize(("mode", "centre_crop", "shape"), [
    ("center", True, (2, 5, 8, 3)), ("none", False, (2, 5, 8, 3)), ("top", True, (2, 5, 5, 3)),
    ("right", True, (2, 5, 5, 3)), ("pad", True, (2, 8, 8, 3))])
def test_square_for_encoder(mode: str, centre_crop: bool, shape: tuple) -> None:
    squared, crop = square_for_encoder(_image(5, 8), mode)
    assert crop is centre_crop and squared.shape == shape


def test_unknown_crop_is_an_option_error() -> None:
    with pytest.raises(InvalidOptionError, match="pad"):
        square_for_encoder(_image(4, 4), "middle")


def _cas_reference(pixels: torch.Tensor, amount: float) -> torch.Tensor:
    """The CAS formula evaluated pixel by pixel in float64 (edges replicated)."""
    b, c, h, w = pixels.shape
    p = pixels.double()
    out = torch.empty_like(p)

    def at(i, j, y, x):
        return p[i, j, min(max(y, 0), h - 1), min(max(x, 0), w - 1)].item()

    for i in range(b):
        for j in range(c):
            for y in range(h):
                for x in range(w):
                    center = at(i, j, y, x)
                    cross = [at(i, j, y - 1, x), at(i, j, y + 1, x), at(i, j, y, x - 1), at(i, j, y, x + 1)]
                    diag = [at(i, j, y + dy, x + dx) for dy in (-1, 1) for dx in (-1, 1)]
                    lo = min(cross + [center]) + min(cross + [center] + diag)
                    hi = max(cross + [center]) + max(cross + [center] + diag)
                    amp = min(max(min(lo, 2 - hi) / max(hi, 1e-8), 0.0), 1.0) ** 0.5
                    lobe = -amount / 5 * amp
                    value = (center + lobe * sum(cross)) / (1 + 4 * lobe)
                    out[i, j, y, x] = min(max(value, 0.0), 1.0)
    return out


@pytest.mark.parametrize("amount", [0.3, 1.0])
def test_cas_matches_the_formula_pixel_by_pixel(amount: float) -> None:
    pixels = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (cas_sharpen(pixels, amount) - _cas_reference(pixels, amount)).abs().max() <= EXACT


def test_cas_off_constant_and_linear_images_are_unchanged() -> None:
    pixels = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    assert cas_sharpen(pixels, 0.0) is pixels
    flat = torch.full((1, 3, 6, 6), 0.4, dtype=torch.float64)
    assert torch.allclose(cas_sharpen(flat, 1.0), flat, atol=EXACT)
    ramp = (torch.arange(8, dtype=torch.float64) / 10).expand(1, 3, 8, 8).clone()
    assert torch.allclose(cas_sharpen(ramp, 1.0)[..., 1:-1], ramp[..., 1:-1], atol=EXACT)


def test_cas_raises_contrast_at_an_edge_more_with_more_amount() -> None:
    edge = torch.cat([torch.full((1, 1, 6, 3), 0.3), torch.full((1, 1, 6, 3), 0.6)], dim=-1).double()
    weak, strong = cas_sharpen(edge, 0.3), cas_sharpen(edge, 1.0)
    assert strong[..., 2].max() < weak[..., 2].max() < 0.3 and strong[..., 3].min() > weak[..., 3].min() > 0.6
    assert strong.min() >= 0 and strong.max() <= 1
