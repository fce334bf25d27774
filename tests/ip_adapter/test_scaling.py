"""`embeds_scaling`: where the weight enters (peer.md §4.1), with the token mean of V taken per reference image."""

from __future__ import annotations

import pytest
import torch

from ip_adapter.errors import InvalidOptionError
from ip_adapter.layout import SD15_LAYOUT as _SD15
from ip_adapter.scaling import EMBEDS_SCALING, scale_embeds
from ip_adapter.weight_types import layer_schedule

BATCH, IMAGE_TOKENS = 2, 4
TIGHT_TOLERANCE = 1e-6
#: peer.md §4.1: the C-penalty modes scale the weight by the layer width over the widest SD layer's.
PENALTY_REFERENCE_WIDTH = 1280


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


WEIGHT = 0.8
#: Layer width -> its C-penalty factor (peer.md §4.1).
PENALTY = {320: 0.25, 640: 0.5, 1280: 1.0}


def _layer_kv(width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _rand(BATCH, IMAGE_TOKENS, width, seed=width), _rand(BATCH, IMAGE_TOKENS, width, seed=width + 1)


def test_v_only_keeps_k_v_and_the_weight() -> None:
    k, v = _layer_kv(320)
    k2, v2, w = scale_embeds(k, v, WEIGHT, "V only")
    assert torch.equal(k2, k) and torch.equal(v2, v) and w == WEIGHT


@pytest.mark.parametrize("width", sorted(PENALTY))
def test_k_plus_v_scales_both_without_penalty(width: int) -> None:
    k, v = _layer_kv(width)
    k2, v2, w = scale_embeds(k, v, WEIGHT, "K+V")
    assert torch.allclose(k2, WEIGHT * k) and torch.allclose(v2, WEIGHT * v) and w == 1.0


@pytest.mark.parametrize("width", sorted(PENALTY))
def test_k_plus_v_with_c_penalty(width: int) -> None:
    k, v = _layer_kv(width)
    scaled = WEIGHT * PENALTY[width]
    assert scaled == pytest.approx(WEIGHT * k.shape[-1] / PENALTY_REFERENCE_WIDTH)
    k2, v2, w = scale_embeds(k, v, WEIGHT, "K+V w/ C penalty")
    assert torch.allclose(k2, scaled * k) and torch.allclose(v2, scaled * v) and w == 1.0


@pytest.mark.parametrize("width", sorted(PENALTY))
def test_k_plus_mean_v_with_c_penalty(width: int) -> None:
    k, v = _layer_kv(width)
    scaled = WEIGHT * PENALTY[width]
    mean = v.mean(dim=1, keepdim=True)
    k2, v2, w = scale_embeds(k, v, WEIGHT, "K+mean(V) w/ C penalty")
    assert torch.allclose(k2, scaled * k)
    assert torch.allclose(v2, v - mean + scaled * mean, atol=TIGHT_TOLERANCE)
    assert torch.allclose(v2.mean(dim=1, keepdim=True), scaled * mean, atol=TIGHT_TOLERANCE)
    assert w == 1.0


def test_every_scaling_mode_is_covered_and_unknown_modes_raise() -> None:
    assert EMBEDS_SCALING == ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
    k, v = _layer_kv(320)
    with pytest.raises(ValueError, match="K only"):
        scale_embeds(k, v, WEIGHT, "K only")


def test_k_plus_mean_v_takes_the_mean_per_concatenated_image() -> None:
    """Two images of IMAGE_TOKENS tokens each: each image keeps its own token mean, scaled (float64 math)."""
    width, images = 640, 2
    k = _rand(BATCH, images * IMAGE_TOKENS, width, seed=1).double()
    v = _rand(BATCH, images * IMAGE_TOKENS, width, seed=2).double() + torch.arange(images).repeat_interleave(
        IMAGE_TOKENS)[None, :, None].double() * 10  # images far apart: a joint mean would be visibly wrong
    scaled = WEIGHT * PENALTY[width]
    _, v2, _ = scale_embeds(k, v, WEIGHT, "K+mean(V) w/ C penalty", tokens_per_image=IMAGE_TOKENS)
    for i in range(images):
        part = slice(i * IMAGE_TOKENS, (i + 1) * IMAGE_TOKENS)
        mean = v[:, part].mean(dim=1, keepdim=True)
        assert (v2[:, part] - (v[:, part] - mean + scaled * mean)).abs().max() <= 1e-12
    joint = scale_embeds(k, v, WEIGHT, "K+mean(V) w/ C penalty")[1]
    assert (joint - v2).abs().max() > 1.0


def test_a_token_count_that_does_not_split_is_one_image() -> None:
    k, v = _layer_kv(320)
    assert torch.equal(scale_embeds(k, v, WEIGHT, "K+mean(V) w/ C penalty", tokens_per_image=3)[1],
                       scale_embeds(k, v, WEIGHT, "K+mean(V) w/ C penalty")[1])


@pytest.mark.parametrize("call", [
    lambda: scale_embeds(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), 1.0, "K only"),
    lambda: layer_schedule("stronger style", _SD15),
], ids=["embeds_scaling", "weight_type"])
def test_unknown_options_raise_the_packs_error_listing_the_choices(call) -> None:
    with pytest.raises(InvalidOptionError, match="choose one of"):
        call()
