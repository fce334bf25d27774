"""Encode Image Prompt with the host's CLIP_VISION: the encodings equal transformers' on the same weights, the
negative follows the reference convention, every crop mode and sharpening prepare the pixels as documented, and
batch_size encodes in chunks with progress."""

from __future__ import annotations

import pytest
import torch

from tests.host.ipa_setup import reference_images
from tests.numerics import assert_relative_close


def _encode(host_pack, clip, images, crop="center", negative=None, sharpening=0.0, batch_size=0):
    node = host_pack.registered["EncodeImagePrompt"]()
    with torch.inference_mode():
        return node.encode(clip.host, images, crop, negative, sharpening, batch_size)[0]


def _twin(clip, pixels):
    with torch.no_grad():
        out = clip.transformers(pixel_values=pixels, output_hidden_states=True)
    return out.image_embeds, out.hidden_states[-2]


def _pixels(images, crop=True):
    import comfy.clip_vision

    return comfy.clip_vision.clip_preprocess(images, crop=crop).float()


def test_positive_equals_transformers_and_negative_is_the_reference_convention(host_pack, tiny_clip_vision):
    images = reference_images(3)
    prompt = _encode(host_pack, tiny_clip_vision, images)
    embeds, hidden = _twin(tiny_clip_vision, _pixels(images))
    assert_relative_close(prompt.positive.image_embeds, embeds)
    assert_relative_close(prompt.positive.hidden_states, hidden)
    assert torch.equal(prompt.negative.image_embeds, torch.zeros_like(embeds[:1]))
    _, zero_hidden = _twin(tiny_clip_vision, torch.zeros_like(_pixels(images[:1])))
    assert_relative_close(prompt.negative.hidden_states, zero_hidden)
    _, black_hidden = _twin(tiny_clip_vision, _pixels(torch.zeros_like(images[:1])))
    assert (prompt.negative.hidden_states - black_hidden).abs().max() > 1e-3  # not the peer's black image


def test_negative_image_replaces_the_default(host_pack, tiny_clip_vision):
    images, negative = reference_images(1), reference_images(1, seed=9)
    prompt = _encode(host_pack, tiny_clip_vision, images, negative=negative)
    embeds, hidden = _twin(tiny_clip_vision, _pixels(negative))
    assert_relative_close(prompt.negative.image_embeds, embeds)
    assert_relative_close(prompt.negative.hidden_states, hidden)


def test_crop_none_stretches_instead_of_cropping(host_pack, tiny_clip_vision):
    wide = torch.rand(1, 40, 90, 3, generator=torch.Generator().manual_seed(4))
    center = _encode(host_pack, tiny_clip_vision, wide, "center").positive.image_embeds
    stretch = _encode(host_pack, tiny_clip_vision, wide, "none").positive.image_embeds
    assert_relative_close(stretch, _twin(tiny_clip_vision, _pixels(wide, crop=False))[0])
    assert (center - stretch).abs().max() > 1e-3


def _progress(monkeypatch) -> list:
    import comfy.utils

    updates = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        updates.append((value, total)))
    return updates


def test_batch_size_encodes_in_chunks_with_progress_and_matches_one_pass(host_pack, tiny_clip_vision, monkeypatch):
    updates = _progress(monkeypatch)
    images = reference_images(5)
    chunked = _encode(host_pack, tiny_clip_vision, images, negative=reference_images(5, seed=3), batch_size=2)
    assert updates[-1] == (3, 3)
    updates.clear()
    whole = _encode(host_pack, tiny_clip_vision, images, negative=reference_images(5, seed=3))
    assert not updates  # batch_size 0: one pass, no progress bar
    embeds, hidden = _twin(tiny_clip_vision, _pixels(images))
    for prompt in (chunked, whole):
        assert_relative_close(prompt.positive.image_embeds, embeds)
        assert_relative_close(prompt.positive.hidden_states, hidden)
    assert_relative_close(chunked.negative.image_embeds, whole.negative.image_embeds)


def test_interrupt_stops_encoding(host_pack, tiny_clip_vision):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _encode(host_pack, tiny_clip_vision, reference_images(3), batch_size=1)
    finally:
        mm.interrupt_current_processing(False)


def _square_pixels(square: torch.Tensor) -> torch.Tensor:
    """What the encoder must see for an already square image: the host's resize of that square."""
    return _pixels(square, crop=True)


@pytest.mark.parametrize(("crop", "part"), [
    ("top", (slice(0, 40), slice(None))), ("bottom", (slice(50, 90), slice(None))),
    ("left", (slice(25, 65), slice(None))), ("right", (slice(25, 65), slice(None)))])
def test_positional_crops_encode_that_square_of_a_tall_image(host_pack, tiny_clip_vision, crop, part):
    tall = torch.rand(1, 90, 40, 3, generator=torch.Generator().manual_seed(5))
    prompt = _encode(host_pack, tiny_clip_vision, tall, crop)
    embeds, hidden = _twin(tiny_clip_vision, _square_pixels(tall[:, part[0], part[1]]))
    assert_relative_close(prompt.positive.image_embeds, embeds)
    assert_relative_close(prompt.positive.hidden_states, hidden)
    assert prompt.crop == crop


def test_pad_encodes_the_whole_image_on_its_edge_colour(host_pack, tiny_clip_vision):
    wide = torch.rand(1, 30, 70, 3, generator=torch.Generator().manual_seed(6))
    prompt = _encode(host_pack, tiny_clip_vision, wide, "pad")
    top, bottom = wide[:, :1].mean(dim=2, keepdim=True), wide[:, -1:].mean(dim=2, keepdim=True)
    square = torch.cat([top.expand(1, 20, 70, 3), wide, bottom.expand(1, 20, 70, 3)], dim=1)
    embeds, _ = _twin(tiny_clip_vision, _square_pixels(square))
    assert_relative_close(prompt.positive.image_embeds, embeds)
    center = _encode(host_pack, tiny_clip_vision, wide, "center").positive.image_embeds
    assert (center - embeds).abs().max() > 1e-3


def test_sharpening_runs_on_the_resized_pixels(host_pack, tiny_clip_vision):
    from ip_adapter.image_prep import cas_sharpen

    images = reference_images(2)
    prompt = _encode(host_pack, tiny_clip_vision, images, sharpening=0.7)
    unit = _pixels(images) * torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1) \
        + torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)  # back to 0..1
    sharpened = cas_sharpen(unit, 0.7)
    mean, std = torch.tensor(tiny_clip_vision.host.image_mean), torch.tensor(tiny_clip_vision.host.image_std)
    embeds, _ = _twin(tiny_clip_vision, (sharpened - mean.view(3, 1, 1)) / std.view(3, 1, 1))
    assert_relative_close(prompt.positive.image_embeds, embeds)
    plain = _encode(host_pack, tiny_clip_vision, images).positive.image_embeds
    assert (prompt.positive.image_embeds - plain).abs().max() > 1e-3


def test_without_a_clip_vision_model_the_error_says_why(host_pack, tiny_clip_vision):
    core = host_pack.module.ip_adapter
    with pytest.raises(core.IncompatibleEncodingError, match="FaceID"):
        host_pack.registered["EncodeImagePrompt"]().encode(None, reference_images(1), "center")
