"""Combining several reference images in CLIP space (peer.md §4.2), against hand-written formulas."""

from __future__ import annotations

import pytest
import torch

from ip_adapter import COMBINE_METHODS, ClipEncoding, ImagePrompt, IPAdapterError, combine

IMAGES, EMBED_DIM, HIDDEN_TOKENS, HIDDEN_DIM = 3, 6, 5, 4
TOLERANCE = 1e-6


def _encoding(n: int, seed: int, hidden: bool = True) -> ClipEncoding:
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n, HIDDEN_TOKENS, HIDDEN_DIM, generator=g) if hidden else None
    return ClipEncoding(torch.randn(n, EMBED_DIM, generator=g), states)


def _prompt(n_positive: int = IMAGES, n_negative: int = IMAGES, hidden: bool = True) -> ImagePrompt:
    return ImagePrompt(_encoding(n_positive, 0, hidden), _encoding(n_negative, 100, hidden))


def _tensors(e: ClipEncoding) -> tuple[torch.Tensor, ...]:
    return (e.image_embeds,) if e.hidden_states is None else (e.image_embeds, e.hidden_states)


def _assert_encoding(actual: ClipEncoding, expected: tuple[torch.Tensor, ...]) -> None:
    got = _tensors(actual)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=TOLERANCE)


def test_every_contract_method_is_offered() -> None:
    assert COMBINE_METHODS == ("concat", "add", "subtract", "average", "norm average")


def test_concat_keeps_every_positive_image() -> None:
    prompt = _prompt()
    out = combine(prompt, "concat")
    assert out.num_images == IMAGES
    _assert_encoding(out.positive, _tensors(prompt.positive))


@pytest.mark.parametrize(("n_negative", "picked"), [(1, [0, 0, 0]), (2, [0, 1, 1]), (3, [0, 1, 2]), (5, [0, 1, 2])])
def test_concat_fits_the_negative_by_repeating_the_last_or_truncating(n_negative: int, picked: list[int]) -> None:
    prompt = _prompt(n_negative=n_negative)
    out = combine(prompt, "concat")
    _assert_encoding(out.negative, tuple(t[picked] for t in _tensors(prompt.negative)))


def _add(x: torch.Tensor) -> torch.Tensor:
    return sum(x[i] for i in range(x.shape[0]))[None]


def _subtract(x: torch.Tensor) -> torch.Tensor:
    rest = sum(x[i] for i in range(1, x.shape[0])) / (x.shape[0] - 1)
    return (x[0] - rest)[None]


def _average(x: torch.Tensor) -> torch.Tensor:
    return (sum(x[i] for i in range(x.shape[0])) / x.shape[0])[None]


def _norm_average(x: torch.Tensor) -> torch.Tensor:
    """Each element divided by the norm of that element across the images, then the mean over images."""
    norm = torch.sqrt(sum(x[i] ** 2 for i in range(x.shape[0])))
    return _average(x / norm)


FORMULAS = {"add": _add, "subtract": _subtract, "average": _average, "norm average": _norm_average}


@pytest.mark.parametrize("method", sorted(FORMULAS))
def test_reducing_methods_follow_their_formula(method: str) -> None:
    prompt = _prompt()
    out = combine(prompt, method)
    assert out.num_images == 1
    _assert_encoding(out.positive, tuple(FORMULAS[method](t) for t in _tensors(prompt.positive)))


@pytest.mark.parametrize("method", sorted(FORMULAS))
def test_reducing_methods_keep_the_first_negative(method: str) -> None:
    prompt = _prompt()
    out = combine(prompt, method)
    _assert_encoding(out.negative, tuple(t[:1] for t in _tensors(prompt.negative)))


@pytest.mark.parametrize("method", sorted(FORMULAS))
def test_missing_hidden_states_stay_missing(method: str) -> None:
    out = combine(_prompt(hidden=False), method)
    assert out.positive.hidden_states is None and out.negative.hidden_states is None


def test_norm_average_is_element_wise_across_images() -> None:
    """x0 = (3, 1), x1 = (4, 1): norms across images (5, sqrt 2), so the result is (0.7, 1/sqrt 2); a per-vector L2
    normalisation would give a different first element."""
    embeds = torch.tensor([[3.0, 1.0], [4.0, 1.0]])
    prompt = ImagePrompt(ClipEncoding(embeds, None), ClipEncoding(torch.zeros(2, 2), None))
    out = combine(prompt, "norm average").positive.image_embeds
    assert torch.allclose(out, torch.tensor([[0.7, 2.0**-0.5]]), atol=TOLERANCE)


@pytest.mark.parametrize("method", sorted(FORMULAS))
def test_every_reducing_method_passes_one_image_unchanged(method: str) -> None:
    """One reference image: nothing to combine. (norm average used to return sign(x): +-1 everywhere, NaN at 0.)"""
    prompt = _prompt(n_positive=1)
    _assert_encoding(combine(prompt, method).positive, _tensors(prompt.positive))


def test_subtract_with_one_image_returns_it() -> None:
    prompt = _prompt(n_positive=1)
    _assert_encoding(combine(prompt, "subtract").positive, _tensors(prompt.positive))


def test_unknown_method_raises_pack_error() -> None:
    with pytest.raises(IPAdapterError, match="'median'"):
        combine(_prompt(), "median")
