"""The pack's nodes inside ComfyUI against diffusers' IP-Adapter on a UNet twin with identical weights.

Load IP-Adapter reads an official-format file from the host's ipadapter folder, Encode Image Prompt encodes with the
host's CLIP_VISION, Apply IP-Adapter patches a clone of the host model; the noise prediction comes from the host's
own sampling path and must equal diffusers' (<= 1e-4, float32).
"""

from __future__ import annotations

import pytest
import torch

from tests.host.ipa_setup import (
    SIGMA,
    PackNodes,
    adapter_groups,
    apply,
    latent,
    reference_images,
    text_conds,
    twin_batch_eps,
    twin_clip_inputs,
    twin_ip_eps,
    twin_with_adapters,
    write_adapter,
)
from tests.host.predict import host_eps
from tests.numerics import assert_relative_close

#: The adapter must move the prediction clearly, or parity would prove nothing.
MIN_EFFECT = 1e-2
WEIGHT = 0.8
CASES = [("sd15", "base"), ("sd15", "plus"), ("sd15", "full-face"), ("sdxl", "base"), ("sdxl", "plus")]


@pytest.fixture(params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def case(request, tiny_sd15, tiny_sdxl, tiny_clip_vision, host_models, host_pack):
    family, kind = request.param
    unet = tiny_sd15 if family == "sd15" else tiny_sdxl
    groups = adapter_groups(kind, unet, tiny_clip_vision, seed=len(kind))
    filename = write_adapter(host_models, groups, f"tiny-{kind}_{family}.safetensors")
    nodes = PackNodes.of(host_pack)
    adapter = nodes.load.load(filename)[0]
    return unet, kind, groups, nodes, adapter


def _encode(nodes, clip, images):
    with torch.inference_mode():
        return nodes.encode.encode(clip.host, images, "center")[0]


def test_conditional_row_matches_diffusers(case, tiny_clip_vision):
    unet, kind, groups, nodes, adapter = case
    images = reference_images(1)
    model = apply(nodes, unet.patcher, adapter, _encode(nodes, tiny_clip_vision, images), WEIGHT)
    cond, _ = text_conds(unet)
    x = latent()
    ours = host_eps(model, x, SIGMA, cond)[0]
    plain = host_eps(unet.patcher, x, SIGMA, cond)[0]
    pos, _ = twin_clip_inputs(tiny_clip_vision, images, kind)
    reference = twin_ip_eps(twin_with_adapters(unet, [groups], [WEIGHT]), unet, x, cond, [pos])
    assert (ours - plain).abs().max() > MIN_EFFECT
    assert_relative_close(ours, reference)


def test_cond_uncond_batch_matches_diffusers(case, tiny_clip_vision):
    unet, kind, groups, nodes, adapter = case
    images = reference_images(2, seed=5)
    model = apply(nodes, unet.patcher, adapter, _encode(nodes, tiny_clip_vision, images), WEIGHT)
    cond, uncond = text_conds(unet)
    x = latent()
    ours_cond, ours_uncond = host_eps(model, x, SIGMA, cond, uncond)
    twin = twin_with_adapters(unet, [groups], [WEIGHT])
    ref_cond, ref_uncond = twin_batch_eps(twin, unet, x, cond, uncond, [twin_clip_inputs(tiny_clip_vision, images,
                                                                                         kind)])
    assert_relative_close(ours_cond, ref_cond)
    assert_relative_close(ours_uncond, ref_uncond)
    plain_uncond = host_eps(unet.patcher, x, SIGMA, cond, uncond)[1]
    assert (ours_uncond - plain_uncond).abs().max() > MIN_EFFECT  # the negative tokens do act on uncond rows
