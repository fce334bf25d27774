"""Decoupled cross-attention against a naive per-head reference (float64): weights, several terms, masks, the
attention function parameter and a foreign text attention."""

from __future__ import annotations

import math

import pytest
import torch

from ip_adapter.attention import ImageTerm, decoupled_attention, sdpa_attention

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


def test_text_attention_parameter_replaces_only_the_text_part() -> None:
    q, k, v = _qkv()
    term = ImageTerm(*_image_kv(10), weight=0.5)

    def zero_text(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        return torch.zeros_like(q)

    out = decoupled_attention(q, k, v, HEADS, [term], text_attention=zero_text)
    assert _max_diff(out, naive_decoupled(q, k, v, [term]) - naive_attention(q, k, v, HEADS)) <= TOLERANCE
