"""Decoupled cross-attention against a naive per-head reference; cond/uncond row selection; embeds scaling; masks
resized per layer; image K/V computed once per layer."""

from __future__ import annotations

import math

import pytest
import torch

from ip_adapter import ImageKV, IPAdapter
from ip_adapter.attention import (
    EMBEDS_SCALING,
    ImageTerm,
    decoupled_attention,
    mask_for_queries,
    rows_for_chunks,
    scale_embeds,
    sdpa_attention,
)
from ip_adapter.checkpoint import CheckpointGroups
from ip_adapter.errors import InvalidOptionError
from ip_adapter.layout import SD15_LAYOUT as _SD15
from ip_adapter.weight_types import layer_schedule
from tests.factories import image_proj_shapes, random_groups

BATCH, QUERIES, TEXT_TOKENS, IMAGE_TOKENS = 2, 6, 5, 4
HEADS, HEAD_DIM = 3, 4
INNER = HEADS * HEAD_DIM
TOLERANCE = 1e-5
TIGHT_TOLERANCE = 1e-6
#: A change that matters: far above float error, far below the outputs' unit scale.
MIN_EFFECT = 1e-2
#: peer.md §4.1: the C-penalty modes scale the weight by the layer width over the widest SD layer's.
PENALTY_REFERENCE_WIDTH = 1280


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _qkv(seed: int = 0, text_tokens: int = TEXT_TOKENS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (_rand(BATCH, QUERIES, INNER, seed=seed), _rand(BATCH, text_tokens, INNER, seed=seed + 1),
            _rand(BATCH, text_tokens, INNER, seed=seed + 2))


def _image_kv(seed: int, tokens: int = IMAGE_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    return _rand(BATCH, tokens, INNER, seed=seed), _rand(BATCH, tokens, INNER, seed=seed + 1)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V, one head at a time, in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    d = q.shape[-1] // heads
    out = torch.empty_like(q)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        logits = q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(d)
        weights = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
        out[..., cols] = (weights / weights.sum(dim=-1, keepdim=True)) @ v[..., cols]
    return out


def naive_decoupled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, terms: list[ImageTerm]) -> torch.Tensor:
    out = naive_attention(q, k, v, HEADS)
    for term in terms:
        image = naive_attention(q, term.k, term.v, HEADS)
        if term.mask is not None:
            image = image * term.mask.double()
        out = out + term.weight * image
    return out


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def test_sdpa_attention_is_per_head_softmax() -> None:
    q, k, v = _qkv()
    assert _max_diff(sdpa_attention(q, k, v, HEADS), naive_attention(q, k, v, HEADS)) <= TOLERANCE


def test_decoupled_attention_matches_naive_reference() -> None:
    q, k, v = _qkv()
    terms = [ImageTerm(*_image_kv(10), weight=0.7), ImageTerm(*_image_kv(20, tokens=7), weight=-0.3)]
    out = decoupled_attention(q, k, v, HEADS, terms)
    assert _max_diff(out, naive_decoupled(q, k, v, terms)) <= TOLERANCE


def test_image_term_changes_the_output() -> None:
    q, k, v = _qkv()
    out = decoupled_attention(q, k, v, HEADS, [ImageTerm(*_image_kv(10), weight=1.0)])
    assert _max_diff(out, sdpa_attention(q, k, v, HEADS)) > MIN_EFFECT


def test_weight_zero_is_exactly_the_text_attention() -> None:
    q, k, v = _qkv()
    poisoned = torch.full((BATCH, IMAGE_TOKENS, INNER), float("nan"))
    out = decoupled_attention(q, k, v, HEADS, [ImageTerm(poisoned, poisoned, weight=0.0)])
    assert torch.equal(out, sdpa_attention(q, k, v, HEADS))


def test_duplicated_image_tokens_leave_the_output_unchanged() -> None:
    q, k, v = _qkv()
    ik, iv = _image_kv(10)
    once = decoupled_attention(q, k, v, HEADS, [ImageTerm(ik, iv, weight=0.8)])
    twice = decoupled_attention(q, k, v, HEADS, [ImageTerm(torch.cat([ik, ik], 1), torch.cat([iv, iv], 1), 0.8)])
    assert _max_diff(once, twice) <= TIGHT_TOLERANCE


def test_a_zero_weight_second_term_adds_nothing() -> None:
    q, k, v = _qkv()
    first = ImageTerm(*_image_kv(10), weight=0.6)
    both = decoupled_attention(q, k, v, HEADS, [first, ImageTerm(*_image_kv(20), weight=0.0)])
    assert torch.equal(both, decoupled_attention(q, k, v, HEADS, [first]))


@pytest.mark.parametrize("mask_batch", [1, BATCH], ids=["shared-mask", "per-row-mask"])
def test_mask_multiplies_the_image_term_only(mask_batch: int) -> None:
    q, k, v = _qkv()
    ik, iv = _image_kv(10)
    mask = torch.rand(mask_batch, QUERIES, 1, generator=torch.Generator().manual_seed(3))
    mask[:, 0] = 0.0
    mask[:, 1] = 1.0
    text = sdpa_attention(q, k, v, HEADS)
    full = decoupled_attention(q, k, v, HEADS, [ImageTerm(ik, iv, weight=0.9)])
    masked = decoupled_attention(q, k, v, HEADS, [ImageTerm(ik, iv, weight=0.9, mask=mask)])
    assert _max_diff(masked - text, mask * (full - text)) <= TIGHT_TOLERANCE
    assert _max_diff(masked[:, 0], text[:, 0]) == 0.0
    assert _max_diff(masked[:, 1], full[:, 1]) <= TIGHT_TOLERANCE


def test_custom_attention_function_is_used_for_every_branch() -> None:
    q, k, v = _qkv()
    calls: list[int] = []

    def counting(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        calls.append(k.shape[1])
        return sdpa_attention(q, k, v, heads)

    decoupled_attention(q, k, v, HEADS, [ImageTerm(*_image_kv(10), 0.5), ImageTerm(*_image_kv(20), 0.0)],
                        attention_fn=counting)
    assert calls == [TEXT_TOKENS, IMAGE_TOKENS]


# --- cond / uncond rows ---------------------------------------------------------------------------------------------

ROWS_PER_CHUNK = 2
POS, NEG = "p", "n"


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [([1, 0], "nnpp"), ([0], "pp"), ([1], "nn"), ([1, 0, 0], "nnpppp")],
)
def test_rows_for_chunks_selects_negative_for_uncond_chunks(chunks: list[int], expected: str) -> None:
    positive, negative = _rand(1, IMAGE_TOKENS, INNER, seed=1), _rand(1, IMAGE_TOKENS, INNER, seed=2)
    rows = rows_for_chunks(positive, negative, chunks, ROWS_PER_CHUNK)
    assert rows.shape == (len(expected), IMAGE_TOKENS, INNER)
    for row, which in zip(rows, expected):
        assert torch.equal(row, (positive if which == POS else negative)[0])


# --- embeds scaling -------------------------------------------------------------------------------------------------

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


# --- masks ----------------------------------------------------------------------------------------------------------

#: ComfyUI's UNet halves the latent grid at each level; SD1.5 attends at 1, 1/2, 1/4 and 1/8 of the latent.
DOWNSAMPLE_FACTORS = (1, 2, 4, 8)


def _left_half(height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[..., : width // 2] = 1.0
    return mask


def _expected_left_half(grid_h: int, grid_w: int) -> torch.Tensor:
    return _left_half(grid_h, grid_w).reshape(1, grid_h * grid_w, 1)


@pytest.mark.parametrize("latent_hw", [(64, 64), (64, 96), (96, 64), (128, 80)], ids=str)
@pytest.mark.parametrize("factor", DOWNSAMPLE_FACTORS)
def test_left_half_mask_is_exact_on_block_aligned_grids(latent_hw: tuple[int, int], factor: int) -> None:
    grid = (latent_hw[0] // factor, latent_hw[1] // factor)
    resized = mask_for_queries(_left_half(*latent_hw), grid[0] * grid[1], latent_hw)
    assert torch.equal(resized, _expected_left_half(*grid))


def test_several_masks_keep_their_order() -> None:
    latent_hw, factor = (64, 96), 2
    left = _left_half(*latent_hw)
    masks = torch.cat([left, 1.0 - left])
    grid = (latent_hw[0] // factor, latent_hw[1] // factor)
    resized = mask_for_queries(masks, grid[0] * grid[1], latent_hw)
    expected = _expected_left_half(*grid)
    assert resized.shape == (2, grid[0] * grid[1], 1)
    assert torch.equal(resized[0], expected[0]) and torch.equal(resized[1], 1.0 - expected[0])


GREY = 0.5


def test_continuous_values_survive() -> None:
    latent_hw, grid = (32, 32), (16, 16)
    grey = torch.full((1, *latent_hw), GREY)
    resized = mask_for_queries(grey, grid[0] * grid[1], latent_hw)
    assert torch.equal(resized, torch.full((1, grid[0] * grid[1], 1), GREY))


# 61 queries on an 8x8 latent: the grid recovered is 8 x 7 = 56 cells, so 5 zeros pad it, 2 before and 3 after.
PAD_LATENT, PAD_QUERIES, PAD_GRID, PAD_BEFORE, PAD_AFTER = (8, 8), 61, (8, 7), 2, 3


def test_grid_that_does_not_tile_is_zero_padded_at_both_ends() -> None:
    resized = mask_for_queries(torch.ones(1, *PAD_LATENT), PAD_QUERIES, PAD_LATENT)
    cells = PAD_GRID[0] * PAD_GRID[1]
    expected = torch.cat([torch.zeros(PAD_BEFORE), torch.ones(cells), torch.zeros(PAD_AFTER)]).reshape(1, -1, 1)
    assert torch.equal(resized, expected)


# Odd latents (e.g. 520x512 px -> 65x64): each UNet level halves with ceil, so one level down a 65x64 latent is
# attended as 33 x 32 queries. The sqrt estimate alone would give 32 x 33 and shear the mask.
ODD_LATENTS = ((65, 64), (63, 64), (97, 128))


@pytest.mark.parametrize("latent_hw", ODD_LATENTS, ids=str)
@pytest.mark.parametrize("factor", DOWNSAMPLE_FACTORS)
def test_odd_latents_recover_the_true_grid(latent_hw: tuple[int, int], factor: int) -> None:
    grid = (math.ceil(latent_hw[0] / factor), latent_hw[1] // factor)
    resized = mask_for_queries(_left_half(*latent_hw), grid[0] * grid[1], latent_hw)
    assert resized.shape == (1, grid[0] * grid[1], 1)
    assert _max_diff(resized, _expected_left_half(*grid)) <= TIGHT_TOLERANCE


# --- image K/V cache ------------------------------------------------------------------------------------------------

CROSS, EMBED, KV_TOKENS, LAYER_WIDTH = 8, 6, 4, 12
SD15_LAYERS = 16


def _small_adapter() -> IPAdapter:
    groups = random_groups(image_proj_shapes(CROSS, EMBED, KV_TOKENS), [LAYER_WIDTH] * SD15_LAYERS, CROSS)
    return IPAdapter.from_groups(CheckpointGroups("small.safetensors", groups["image_proj"], groups["ip_adapter"]))


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    inner = module.forward

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return inner(x)

    module.forward = counted
    return calls


@pytest.fixture
def kv_setup() -> tuple[IPAdapter, ImageKV, torch.Tensor, torch.Tensor]:
    adapter = _small_adapter()
    positive, negative = _rand(1, KV_TOKENS, CROSS, seed=1), _rand(1, KV_TOKENS, CROSS, seed=2)
    return adapter, ImageKV(adapter, positive, negative), positive, negative


def test_image_kv_rows_are_positive_then_negative(kv_setup: tuple) -> None:
    adapter, kv, positive, negative = kv_setup
    k, v = kv.get(3, torch.device("cpu"), torch.float32)
    layer = adapter.layers["3"]
    for row, tokens in ((0, positive), (1, negative)):
        assert torch.allclose(k[row], tokens[0] @ layer["to_k_ip"].weight.T)
        assert torch.allclose(v[row], tokens[0] @ layer["to_v_ip"].weight.T)


def test_image_kv_computes_each_layer_once(kv_setup: tuple) -> None:
    adapter, kv, _, _ = kv_setup
    k_calls, v_calls = _count_calls(adapter.layers["1"]["to_k_ip"]), _count_calls(adapter.layers["1"]["to_v_ip"])
    other = _count_calls(adapter.layers["5"]["to_k_ip"])
    first = kv.get(1, torch.device("cpu"), torch.float32)
    for _ in range(3):
        again = kv.get(1, "cpu", torch.float32)
        assert again[0] is first[0] and again[1] is first[1]
    assert (len(k_calls), len(v_calls), len(other)) == (1, 1, 0)
    kv.get(5, "cpu", torch.float32)
    assert (len(k_calls), len(other)) == (1, 1)


def test_image_kv_clear_forces_recomputation(kv_setup: tuple) -> None:
    adapter, kv, _, _ = kv_setup
    calls = _count_calls(adapter.layers["1"]["to_k_ip"])
    kv.get(1, "cpu", torch.float32)
    kv.clear()
    kv.get(1, "cpu", torch.float32)
    kv.get(1, "cpu", torch.float32)
    assert len(calls) == 2


def test_image_kv_keeps_one_entry_per_dtype(kv_setup: tuple) -> None:
    adapter, kv, _, _ = kv_setup
    calls = _count_calls(adapter.layers["1"]["to_k_ip"])
    k32, _ = kv.get(1, "cpu", torch.float32)
    k64, _ = kv.get(1, "cpu", torch.float64)
    kv.get(1, "cpu", torch.float64)
    assert (k32.dtype, k64.dtype, len(calls)) == (torch.float32, torch.float64, 2)
    assert torch.equal(k64, k32.double())


@pytest.mark.parametrize("call", [
    lambda: scale_embeds(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), 1.0, "K only"),
    lambda: layer_schedule("stronger style", _SD15),
], ids=["embeds_scaling", "weight_type"])
def test_unknown_options_raise_the_packs_error_listing_the_choices(call) -> None:
    with pytest.raises(InvalidOptionError, match="choose one of"):
        call()
