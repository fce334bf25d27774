"""DiT adapters in the real host against diffusers on the same weights: noise predictions (velocities) of the tiny
FLUX.1 with XLabs v1 / v2 (`FluxIPAdapterMixin`, `FluxIPAdapterAttnProcessor`) and of the tiny SD3.5 MMDiT with
InstantX's adapter (`SD3IPAdapterMixin`, `IPAdapterTimeImageProjection`), for a conditional row and for a
cond + uncond batch (the uncond row gets the family's reference negative), plus stacking and Flux Redux.

The nodes run as the executor runs them: LoadIPAdapter on the file in its released layout, EncodeImagePrompt with the
host's CLIP vision object, ApplyIPAdapter; the host side goes through the sampler's own calc_cond_batch.
"""

from __future__ import annotations

import pytest
import torch

from tests.host.dit_setup import *  # noqa: F403  (fixtures)
from tests.host.dit_setup import (
    SIGMA,
    WEIGHT,
    apply,
    clip_features,
    conds,
    encode,
    latent,
    load,
    max_diff,
    reference_image,
    siglip_features,
    velocity,
)
from tests.host.predict import host_denoised
from tests.host.tiny_dit import T5_WIDTH, flux_twin_velocity, sd3_twin_velocity, twin_with_instantx, twin_with_xlabs

PARITY = 1e-4
#: The image term must change the prediction by at least this much, or the parity would prove nothing.
MIN_EFFECT = 1e-2


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_flux_xlabs_matches_diffusers(version, flux, tiny_clip_vision, nodes, dit_files, record_property) -> None:
    image, x = reference_image(), latent()
    cond, uncond = conds("flux", 2), conds("flux", 3)
    adapter = load(nodes, dit_files, version)
    assert adapter.adapter.spec.kind == f"xlabs-{version}"
    model = apply(nodes, flux.patcher, adapter, encode(nodes, tiny_clip_vision.host, image))
    twin = twin_with_xlabs(flux, dit_files.folder, [dit_files.names[version]], [WEIGHT])
    positive, black = clip_features(tiny_clip_vision, image)

    (host_cond,) = velocity(model, x, SIGMA, cond)
    expected = flux_twin_velocity(twin, x, SIGMA, cond.context, cond.pooled, [positive[:, None]])
    host_c, host_u = velocity(model, x, SIGMA, cond, uncond)
    batch = flux_twin_velocity(twin, x.repeat(2, 1, 1, 1), SIGMA, torch.cat([uncond.context, cond.context]),
                               torch.cat([uncond.pooled, cond.pooled]), [torch.cat([black, positive])[:, None]])
    (base,) = velocity(flux.patcher, x, SIGMA, cond)
    diffs = {"cond": max_diff(host_cond, expected), "batch uncond": max_diff(host_u, batch[:1]),
             "batch cond": max_diff(host_c, batch[1:])}
    record_property("max_abs_diff", diffs)
    assert max(diffs.values()) <= PARITY, diffs
    assert max_diff(host_cond, base) > MIN_EFFECT


def test_sd35_instantx_matches_diffusers(mmdit, siglip, nodes, dit_files, record_property) -> None:
    image, x = reference_image(), latent()
    cond, uncond = conds("sd35", 2), conds("sd35", 3)
    adapter = load(nodes, dit_files, "sd35")
    assert adapter.adapter.spec.kind == "instantx"
    model = apply(nodes, mmdit.patcher, adapter, encode(nodes, siglip.host, image, crop="none"))
    twin = twin_with_instantx(mmdit, dit_files.folder, dit_files.names["sd35"], WEIGHT)
    features = siglip_features(siglip, image)

    (host_cond,) = velocity(model, x, SIGMA, cond)
    expected = sd3_twin_velocity(twin, x, SIGMA, cond.context, cond.pooled, features)
    host_c, host_u = velocity(model, x, SIGMA, cond, uncond)
    negative = torch.zeros_like(features)  # InstantX's reference negative
    batch = sd3_twin_velocity(twin, x.repeat(2, 1, 1, 1), SIGMA, torch.cat([uncond.context, cond.context]),
                              torch.cat([uncond.pooled, cond.pooled]), torch.cat([negative, features]))
    (base,) = velocity(mmdit.patcher, x, SIGMA, cond)
    diffs = {"cond": max_diff(host_cond, expected), "batch uncond": max_diff(host_u, batch[:1]),
             "batch cond": max_diff(host_c, batch[1:])}
    record_property("max_abs_diff", diffs)
    assert max(diffs.values()) <= PARITY, diffs
    assert max_diff(host_cond, base) > MIN_EFFECT


def test_two_stacked_xlabs_adapters_match_diffusers_multi_adapter(flux, tiny_clip_vision, nodes, dit_files) -> None:
    image_a, image_b, x, cond = reference_image(0), reference_image(1), latent(), conds("flux", 2)
    model = apply(nodes, flux.patcher, load(nodes, dit_files, "v1"), encode(nodes, tiny_clip_vision.host, image_a),
                  weight=0.6)
    model = apply(nodes, model, load(nodes, dit_files, "v1b"), encode(nodes, tiny_clip_vision.host, image_b),
                  weight=0.3)
    twin = twin_with_xlabs(flux, dit_files.folder, [dit_files.names["v1"], dit_files.names["v1b"]], [0.6, 0.3])
    embeds = [clip_features(tiny_clip_vision, image)[0][:, None] for image in (image_a, image_b)]
    (host,) = velocity(model, x, SIGMA, cond)
    assert max_diff(host, flux_twin_velocity(twin, x, SIGMA, cond.context, cond.pooled, embeds)) <= PARITY


def test_stacked_instantx_terms_add_up(mmdit, siglip, nodes, dit_files) -> None:
    """The image term is linear in the weight, so the same adapter at 0.5 then 0.3 equals it once at 0.8."""
    adapter, x, cond = load(nodes, dit_files, "sd35"), latent(), conds("sd35", 2)
    prompt = encode(nodes, siglip.host, reference_image(), crop="none")
    stacked = apply(nodes, apply(nodes, mmdit.patcher, adapter, prompt, weight=0.5), adapter, prompt, weight=0.3)
    once = apply(nodes, mmdit.patcher, adapter, prompt, weight=0.8)
    (a,), (b,) = velocity(stacked, x, SIGMA, cond), velocity(once, x, SIGMA, cond)
    assert max_diff(a, b) <= 1e-5


def test_flux_redux_conditioning_and_xlabs_together(flux, tiny_clip_vision, siglip, nodes, dit_files) -> None:
    """Redux appends image tokens to the text conditioning; the XLabs term still matches diffusers with the same
    (longer) text. The Redux encoder is the host's class with narrowed inner layers (its math, tiny weights)."""
    import comfy.sd
    from comfy.ldm.flux.redux import ReduxImageEncoder

    import nodes as host_nodes

    redux = ReduxImageEncoder(redux_dim=siglip.transformers.config.hidden_size, txt_in_features=1)
    redux.redux_up = torch.nn.Linear(redux.redux_dim, 64)  # narrowed: the released inner width is 3 * 4096
    redux.redux_down = torch.nn.Linear(64, T5_WIDTH)
    image, x, cond = reference_image(), latent(), conds("flux", 2)
    with torch.inference_mode():
        vision = siglip.host.encode_image(reference_image(4), crop=False)
        (conditioning,) = host_nodes.StyleModelApply().apply_stylemodel(
            cond.comfy(), comfy.sd.StyleModel(redux), vision, 1.0, "multiply")
    context = conditioning[0][0]
    assert context.shape[1] > cond.context.shape[1]
    model = apply(nodes, flux.patcher, load(nodes, dit_files, "v1"), encode(nodes, tiny_clip_vision.host, image))
    host = (x - host_denoised(model, x, SIGMA, conditioning)[0]) / SIGMA
    twin = twin_with_xlabs(flux, dit_files.folder, [dit_files.names["v1"]], [WEIGHT])
    positive, _ = clip_features(tiny_clip_vision, image)
    expected = flux_twin_velocity(twin, x, SIGMA, context.clone(), cond.pooled, [positive[:, None]])
    assert max_diff(host, expected) <= PARITY
