"""Encode Image Prompt with the host's CLIP_VISION: the encodings equal transformers' on the same weights, the
negative follows the reference convention, crop is honoured, and large batches run in chunks with progress."""

from __future__ import annotations

import pytest
import torch

from tests.host.ipa_setup import reference_images
from tests.numerics import assert_relative_close


def _encode(host_pack, clip, images, crop="center", negative=None):
    node = host_pack.registered["EncodeImagePrompt"]()
    with torch.inference_mode():
        return node.encode(clip.host, images, crop, negative)[0]


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


def test_large_batches_are_chunked_with_progress_and_match_one_pass(host_pack, tiny_clip_vision, monkeypatch):
    import comfy.utils

    module = host_pack.module.nodes.encode_image_prompt
    monkeypatch.setattr(module, "CHUNK", 2)
    updates = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        updates.append((value, total)))
    images = reference_images(5)
    chunked = _encode(host_pack, tiny_clip_vision, images)
    embeds, _ = _twin(tiny_clip_vision, _pixels(images))
    assert_relative_close(chunked.positive.image_embeds, embeds)
    assert updates[-1] == (3, 3)


def test_interrupt_stops_encoding(host_pack, tiny_clip_vision, monkeypatch):
    import comfy.model_management as mm

    monkeypatch.setattr(host_pack.module.nodes.encode_image_prompt, "CHUNK", 1)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _encode(host_pack, tiny_clip_vision, reference_images(3))
    finally:
        mm.interrupt_current_processing(False)
