"""DiT adapter math in the core against diffusers' own modules on the same weights, in float64 (same math, so
agreement to rounding): XLabs' projection, InstantX's timestep-aware resampler and its per-block joint attention.
Also the DiT weight types, the family reference negatives and the once-per-step token cache."""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders.transformer_flux import FluxTransformer2DLoadersMixin
from diffusers.loaders.transformer_sd3 import SD3Transformer2DLoadersMixin
from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
from safetensors.torch import save_file

from ip_adapter import ClipEncoding, ImagePrompt, IncompatibleEncodingError, InvalidOptionError, combine
from ip_adapter import load_ip_adapter as load
from ip_adapter.attention import sdpa_attention
from ip_adapter.dit.prompts import dit_features
from ip_adapter.dit.tokens import TimedTokens
from ip_adapter.dit.weight_types import DIT_WEIGHT_TYPES, block_factors, check_embeds_scaling
from tests.dit_factories import instantx_shapes, random_groups, random_tensors, xlabs_shapes
from tests.ip_adapter.test_dit_detect import TINY_INSTANTX, TINY_XLABS

FLOAT64 = 1e-12
#: diffusers' RMSNorm takes its statistics in float32 even for float64 inputs (about 1e-7 relative).
FLOAT32_STATISTICS = 1e-6


@pytest.fixture(scope="module")
def xlabs(tmp_path_factory):
    path = tmp_path_factory.mktemp("xlabs") / "ip_adapter.safetensors"
    flat = random_tensors(xlabs_shapes(**TINY_XLABS))
    save_file(flat, str(path))
    return load(path), {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("ip_adapter_proj_model.")}


@pytest.fixture(scope="module")
def instantx(tmp_path_factory):
    path = tmp_path_factory.mktemp("instantx") / "ip-adapter.bin"
    groups = random_groups(instantx_shapes(**TINY_INSTANTX))
    torch.save(groups, path)
    return load(path), groups


def test_xlabs_projection_equals_diffusers_image_projection(xlabs) -> None:
    adapter, image_proj = xlabs
    reference = FluxTransformer2DLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
        None, dict(image_proj), low_cpu_mem_usage=False).double()
    embeds = torch.randn(3, TINY_XLABS["clip_width"], dtype=torch.float64)
    ours = adapter.image_proj.double()(embeds)
    assert (ours - reference(embeds)).abs().max() <= FLOAT64
    adapter.image_proj.float()


@pytest.mark.parametrize("timestep", [0.0, 283.5, 999.0])
def test_time_resampler_equals_diffusers_time_image_projection(instantx, timestep) -> None:
    adapter, groups = instantx
    reference = SD3Transformer2DLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
        None, dict(groups["image_proj"]), low_cpu_mem_usage=False).double()
    features = torch.randn(2, 9, TINY_INSTANTX["clip_width"], dtype=torch.float64)
    t = torch.full((2,), timestep, dtype=torch.float64)
    tokens, temb = adapter.image_proj.double()(features, t)
    ref_tokens, ref_temb = reference(features, t)
    adapter.image_proj.float()
    assert (tokens - ref_tokens).abs().max() <= FLOAT64 and (temb - ref_temb).abs().max() <= FLOAT64


def test_joint_layer_equals_diffusers_sd3_ip_processor(instantx) -> None:
    """Our block term (adaLN'd tokens -> K/V, adapter's own q/k norms, attention over image + IP keys) equals the
    IP part of diffusers' processor: processor(with IP) - processor(scale 0), before the shared out-projection."""
    from diffusers.models.attention_processor import Attention

    adapter, groups = instantx
    hidden, heads = TINY_INSTANTX["hidden"], TINY_INSTANTX["hidden"] // TINY_INSTANTX["head_dim"]
    attn = Attention(query_dim=hidden, heads=heads, dim_head=64, out_bias=True, bias=True).double()
    attn.to_out[0] = torch.nn.Identity()  # compare before the out-projection
    processor = SD3IPAdapterJointAttnProcessor2_0(hidden, hidden, 64, TINY_INSTANTX["dim"], scale=1.0).double()
    processor.load_state_dict({k.split(".", 1)[1]: v for k, v in groups["ip_adapter"].items() if k.startswith("1.")})
    x = torch.randn(2, 6, hidden, dtype=torch.float64)
    tokens = torch.randn(2, 8, hidden, dtype=torch.float64)
    temb = torch.randn(2, TINY_INSTANTX["dim"], dtype=torch.float64)
    with_ip = processor(attn, x, ip_hidden_states=tokens, temb=temb)
    processor.scale = 0.0
    expected = with_ip - processor(attn, x, ip_hidden_states=tokens, temb=temb)

    layer = adapter.layers.layer(1).double()
    ip_k, ip_v = layer(tokens, temb)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    ours = layer.attention(q, k, v, ip_k, ip_v, heads, sdpa_attention)
    layer.float()
    assert (ours - expected).abs().max() <= FLOAT32_STATISTICS * expected.abs().max()


def test_timed_tokens_are_made_once_per_timestep(instantx) -> None:
    adapter, _ = instantx
    features = torch.randn(2, 9, TINY_INSTANTX["clip_width"])
    calls = []
    handle = adapter.image_proj.register_forward_hook(lambda *a: calls.append(1))
    timed = TimedTokens(adapter, features, torch.zeros_like(features))
    try:
        first = timed.get(500.0)
        assert timed.get(500.0)[0] is first[0]
        tokens, temb = timed.get(250.0)
    finally:
        handle.remove()
    assert len(calls) == 2
    assert tokens.shape == (2, 2 * TINY_INSTANTX["tokens"], TINY_INSTANTX["hidden"]) and temb.shape[0] == 2
    one, _ = adapter.image_proj(features[1:], 250.0)  # image 2's tokens follow image 1's on the token axis
    torch.testing.assert_close(tokens[0, TINY_INSTANTX["tokens"]:], one[0])


def test_dit_weight_types_are_curves_over_depth_and_unet_types_are_refused() -> None:
    assert block_factors("linear", 19, "FLUX.1") == (1.0,) * 19
    ease_in = block_factors("ease in", 19, "FLUX.1")
    assert ease_in[0] == 1.0 and all(a > b for a, b in zip(ease_in, ease_in[1:]))
    assert set(DIT_WEIGHT_TYPES) == {"linear", "ease in", "ease out", "ease in-out", "reverse in-out"}
    for name in ("style transfer", "composition", "weak input", "weak middle", "strong middle"):
        with pytest.raises(InvalidOptionError, match="UNet") as error:
            block_factors(name, 38, "SD3.5 Large")
        assert "SD3.5 Large" in str(error.value) and "ease in-out" in str(error.value)
    check_embeds_scaling("V only", "FLUX.1")
    with pytest.raises(InvalidOptionError, match="V only"):
        check_embeds_scaling("K+V", "FLUX.1")


def _prompt(embeds: int, hidden: int, tokens: int, default: bool) -> ImagePrompt:
    def enc(n: int, fill: float) -> ClipEncoding:
        return ClipEncoding(torch.full((n, embeds), fill), torch.full((n, tokens, hidden), fill))
    return ImagePrompt(enc(2, 1.0), enc(1, 2.0), black_image=enc(1, 3.0) if default else None)


def test_reference_negatives_per_family(xlabs, instantx) -> None:
    flux_adapter, sd_adapter = xlabs[0], instantx[0]
    flux_default = combine(_prompt(TINY_XLABS["clip_width"], 8, 257, True), "concat")
    assert dit_features(flux_adapter, flux_default)[1].eq(3.0).all()  # the black image, one per reference image
    flux_user = combine(_prompt(TINY_XLABS["clip_width"], 8, 257, False), "concat")
    assert dit_features(flux_adapter, flux_user)[1].eq(2.0).all()
    sd_default = combine(_prompt(4, TINY_INSTANTX["clip_width"], 729, True), "concat")
    positive, negative = dit_features(sd_adapter, sd_default)
    assert negative.eq(0).all() and negative.shape == positive.shape == (2, 729, TINY_INSTANTX["clip_width"])


def test_encoder_of_the_right_width_but_wrong_resolution_is_named(xlabs) -> None:
    prompt = _prompt(TINY_XLABS["clip_width"], 8, 577, True)  # ViT-L/14 at 336 px
    with pytest.raises(IncompatibleEncodingError, match="336 px") as error:
        dit_features(xlabs[0], prompt)
    assert "224 px" in str(error.value)
    with pytest.raises(IncompatibleEncodingError, match="width"):
        dit_features(xlabs[0], _prompt(TINY_XLABS["clip_width"] + 1, 8, 257, True))
