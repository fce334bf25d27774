"""Combine Image Prompts' math: weights scale each prompt's positive encodings, images are joined in order, then
combined exactly as Apply IP-Adapter's combine_images; the negative side follows the image count."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ip_adapter import (
    COMBINE_METHODS,
    ClipEncoding,
    ImagePrompt,
    IncompatibleEncodingError,
    InvalidOptionError,
    combine,
)
from ip_adapter.encoding import fit_images
from ip_adapter.face import FaceEmbeds
from ip_adapter.weighted_prompts import PROMPT_COMBINE_METHODS, combine_weighted

EMBED, TOKENS, HIDDEN = 6, 5, 4
EXACT = 1e-6


def _prompt(n: int, n_negative: int, seed: int, hidden: int | None = HIDDEN, embed: int = EMBED) -> ImagePrompt:
    g = torch.Generator().manual_seed(seed)

    def enc(k: int) -> ClipEncoding:
        states = torch.randn(k, TOKENS, hidden, generator=g) if hidden else None
        return ClipEncoding(torch.randn(k, embed, generator=g), states)

    return ImagePrompt(enc(n), enc(n_negative))


def _fields(e: ClipEncoding) -> list[torch.Tensor]:
    return [e.image_embeds] + ([e.hidden_states] if e.hidden_states is not None else [])


def test_methods_follow_the_contract() -> None:
    assert PROMPT_COMBINE_METHODS == ("concat", "add", "subtract", "average", "norm average", "max", "min")


def test_concat_keeps_every_weighted_image_in_order_and_negatives_follow_each_prompt() -> None:
    a, b = _prompt(2, 1, 0), _prompt(1, 3, 1)
    out = combine_weighted([a, b], [0.5, -2.0], "concat")
    assert out.num_images == 3 and out.negative.num_images == 3
    for got, pa, pb in zip(_fields(out.positive), _fields(a.positive), _fields(b.positive)):
        assert torch.allclose(got, torch.cat([0.5 * pa, -2.0 * pb]), atol=EXACT)
    for got, na, nb in zip(_fields(out.negative), _fields(a.negative), _fields(b.negative)):
        assert torch.equal(got, torch.cat([fit_images(na, 2), fit_images(nb, 1)]))  # weights never touch negatives


@pytest.mark.parametrize(("method", "reduce"), [
    ("add", lambda x: x.sum(0)), ("average", lambda x: x.mean(0)), ("max", lambda x: x.max(0).values),
    ("min", lambda x: x.min(0).values), ("subtract", lambda x: x[0] - x[1:].mean(0))])
def test_reducing_methods_merge_all_weighted_images_into_one(method, reduce) -> None:
    a, b = _prompt(2, 2, 0), _prompt(1, 1, 1)
    out = combine_weighted([a, b], [1.5, 0.5], method)
    assert out.num_images == 1 and out.negative.num_images == 1
    for got, pa, pb in zip(_fields(out.positive), _fields(a.positive), _fields(b.positive)):
        stacked = torch.cat([1.5 * pa, 0.5 * pb])
        assert torch.allclose(got, reduce(stacked)[None], atol=EXACT)
    for got, na in zip(_fields(out.negative), _fields(a.negative)):
        assert torch.equal(got, na[:1])


@pytest.mark.parametrize("method", COMBINE_METHODS)
def test_one_prompt_at_weight_one_equals_apply_combine_images(method: str) -> None:
    prompt = _prompt(3, 2, 4)
    ours, applies = combine_weighted([prompt], [1.0], method), combine(prompt, method)
    for got, want in zip(_fields(ours.positive) + _fields(ours.negative),
                         _fields(applies.positive) + _fields(applies.negative)):
        assert torch.allclose(got, want, atol=EXACT)


def test_prompts_of_different_encoders_are_refused_by_name() -> None:
    with pytest.raises(IncompatibleEncodingError, match="image_prompt_2.*image_prompt_1"):
        combine_weighted([_prompt(1, 1, 0), _prompt(1, 1, 1, embed=8)], [1, 1], "concat",
                         ["image_prompt_1", "image_prompt_2"])
    with pytest.raises(IncompatibleEncodingError):
        combine_weighted([_prompt(1, 1, 0), _prompt(1, 1, 1, hidden=7)], [1, 1], "add")


def test_a_prompt_without_hidden_states_drops_them() -> None:
    out = combine_weighted([_prompt(1, 1, 0), _prompt(1, 1, 1, hidden=None)], [1, 1], "concat")
    assert out.positive.hidden_states is None and out.num_images == 2


def test_unknown_method_is_an_option_error() -> None:
    with pytest.raises(InvalidOptionError, match="max"):
        combine_weighted([_prompt(1, 1, 0)], [1], "median")


def _with_face(prompt: ImagePrompt, seed: int) -> ImagePrompt:
    raw = torch.randn(prompt.num_images, 512, generator=torch.Generator().manual_seed(seed))
    return replace(prompt, face=FaceEmbeds(raw))


def test_face_prompts_join_their_identities_in_order() -> None:
    a, b = _with_face(_prompt(2, 1, 0), 10), _with_face(_prompt(1, 1, 1), 11)
    out = combine_weighted([a, b], [1.0, 1.0], "concat")
    assert torch.equal(out.face.raw, torch.cat([a.face.raw, b.face.raw]))
    assert out.num_images == out.face.num_faces == 3


@pytest.mark.parametrize("weights, method", [((0.5, 1.0), "concat"), ((1.0, 1.0), "average")])
def test_face_prompts_are_not_weighted_or_reduced_here(weights, method) -> None:
    a, b = _with_face(_prompt(1, 1, 0), 10), _with_face(_prompt(1, 1, 1), 11)
    with pytest.raises(InvalidOptionError, match="Apply IP-Adapter FaceID"):
        combine_weighted([a, b], weights, method)


def test_face_and_plain_prompts_do_not_mix() -> None:
    with pytest.raises(IncompatibleEncodingError, match="image_prompt_2 is not a face prompt"):
        combine_weighted([_with_face(_prompt(1, 1, 0), 10), _prompt(1, 1, 1)], [1.0, 1.0], "concat",
                         ["image_prompt_1", "image_prompt_2"])


def test_black_images_follow_each_prompt_and_user_negatives_stand_in_for_them() -> None:
    black = ClipEncoding(torch.full((1, EMBED), 7.0), torch.full((1, TOKENS, HIDDEN), 7.0))
    a, b = replace(_prompt(2, 1, 0), black_image=black), _prompt(1, 1, 1)
    out = combine_weighted([a, b], [0.5, 2.0], "concat")
    expected = torch.cat([fit_images(black.image_embeds, 2), b.negative.image_embeds])
    assert torch.equal(out.black_image.image_embeds, expected)  # weights never touch negatives
    assert combine_weighted([b, b], [1.0, 1.0], "concat").black_image is None
    assert combine_weighted([a, b], [1.0, 1.0], "average").black_image.num_images == 1
