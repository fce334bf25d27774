"""Apply IP-Adapter's contract in the host: off means unpatched, clones share weights, stacking is copy-on-write,
LoRA order does not matter, every cross-attention layer (middle included) is patched, mismatches fail early."""

from __future__ import annotations

import copy

import pytest
import torch

from ip_adapter.layout import LAYOUTS
from tests.host.ipa_setup import (
    FAMILY,
    SIGMA,
    PackNodes,
    adapter_groups,
    apply,
    latent,
    reference_images,
    text_conds,
    twin_batch_eps,
    twin_clip_inputs,
    twin_with_adapters,
    write_adapter,
)
from tests.host.predict import host_eps
from tests.host.tiny_models import build_tiny_clip_vision, unet_lora_state_dict
from tests.numerics import assert_relative_close

EXACT = 1e-6
MIN_EFFECT = 1e-2
MIDDLE_EFFECT = 1e-3
CLONES = 10


@pytest.fixture(scope="module")
def nodes(host_pack) -> PackNodes:
    return PackNodes.of(host_pack)


def _load(nodes, host_models, unet, clip, kind="base", seed=0):
    groups = adapter_groups(kind, unet, clip, seed=seed)
    filename = write_adapter(host_models, groups, f"behaviour-{kind}-{seed}_{unet.kind}.safetensors")
    return groups, nodes.load.load(filename)[0]


def _prompt(nodes, clip, n=1, seed=0):
    with torch.inference_mode():
        return nodes.encode.encode(clip.host, reference_images(n, seed), "center")[0]


def _attn2(model) -> dict:
    return model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


def _eps(model, unet):
    cond, uncond = text_conds(unet)
    return torch.cat(host_eps(model, latent(), SIGMA, cond, uncond))


@pytest.fixture(scope="module")
def sd15_setup(nodes, tiny_sd15, tiny_clip_vision, host_models):
    groups, adapter = _load(nodes, host_models, tiny_sd15, tiny_clip_vision)
    return tiny_sd15, groups, adapter, _prompt(nodes, tiny_clip_vision)


@pytest.mark.parametrize("window", [dict(weight=0.0), dict(start_at=0.9), dict(end_at=0.05)],
                         ids=["weight-0", "before-start", "after-end"])
def test_off_equals_the_unpatched_model(nodes, sd15_setup, window):
    unet, _, adapter, prompt = sd15_setup
    on = apply(nodes, unet.patcher, adapter, prompt, 1.0)
    off = apply(nodes, unet.patcher, adapter, prompt, **{"weight": 1.0, **window})
    plain = _eps(unet.patcher, unet)
    assert (_eps(on, unet) - plain).abs().max() > MIN_EFFECT
    assert (_eps(off, unet) - plain).abs().max() <= EXACT


def test_zero_mask_equals_unpatched_and_half_mask_is_between(nodes, sd15_setup):
    unet, _, adapter, prompt = sd15_setup
    plain, full = _eps(unet.patcher, unet), _eps(apply(nodes, unet.patcher, adapter, prompt), unet)
    zero = apply(nodes, unet.patcher, adapter, prompt, attn_mask=torch.zeros(64, 64))
    half_mask = torch.zeros(64, 64)
    half_mask[:, :32] = 1.0
    half = _eps(apply(nodes, unet.patcher, adapter, prompt, attn_mask=half_mask), unet)
    assert (_eps(zero, unet) - plain).abs().max() <= EXACT
    assert (half - plain).abs().max() > MIN_EFFECT and (half - full).abs().max() > MIN_EFFECT


def test_input_model_is_unchanged(nodes, sd15_setup):
    unet, _, adapter, prompt = sd15_setup
    before = copy.deepcopy(unet.patcher.model_options)
    patched = apply(nodes, unet.patcher, adapter, prompt)
    assert unet.patcher.model_options == before
    assert not _attn2(unet.patcher) and len(_attn2(patched)) == LAYOUTS[FAMILY[unet.kind]].num_layers


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_cross_attention_layer_is_patched_middle_included(nodes, family, tiny_sd15, tiny_sdxl,
                                                               tiny_clip_vision, host_models):
    unet = tiny_sd15 if family == "sd15" else tiny_sdxl
    _, adapter = _load(nodes, host_models, unet, tiny_clip_vision)
    patched = apply(nodes, unet.patcher, adapter, _prompt(nodes, tiny_clip_vision))
    layout = LAYOUTS[FAMILY[family]]
    assert set(_attn2(patched)) == {layer.patch_key for layer in layout.layers}
    assert {key for key in _attn2(patched) if key[0] == "middle"} == {("middle", 0, j) for j in
                                                                      range(1 if family == "sd15" else 10)}


def test_middle_block_patch_acts(nodes, sd15_setup, tiny_clip_vision, host_models):
    unet, groups, _, prompt = sd15_setup
    no_middle = copy.deepcopy(groups)
    middle = LAYOUTS[FAMILY[unet.kind]].layers[-1]
    assert middle.patch_key == ("middle", 0, 0)
    no_middle["ip_adapter"][f"{middle.checkpoint_index}.to_v_ip.weight"].zero_()
    filename = write_adapter(host_models, no_middle, "behaviour-no-middle_sd15.safetensors")
    without = nodes.load.load(filename)[0]
    with_middle = nodes.load.load(write_adapter(host_models, groups, "behaviour-middle_sd15.safetensors"))[0]
    a = _eps(apply(nodes, unet.patcher, with_middle, prompt), unet)
    b = _eps(apply(nodes, unet.patcher, without, prompt), unet)
    # The 1x1 middle block of the 8x8 latent moves the prediction less than the outer layers, but far above
    # float noise (EXACT): the peer's ("middle", 1) keys would give exactly 0 here.
    assert (a - b).abs().max() > MIDDLE_EFFECT


def test_ten_clones_share_one_copy_of_the_adapter(nodes, sd15_setup):
    unet, _, adapter, prompt = sd15_setup
    model = apply(nodes, unet.patcher, adapter, prompt)
    clones = [model]
    for _ in range(CLONES):
        clones.append(clones[-1].clone())
    storages = {p.data_ptr() for c in clones for patch in _attn2(c).values() for e in patch.entries
                for p in e.adapter.parameters()}
    assert storages == {p.data_ptr() for p in adapter.adapter.parameters()}
    assert all(_attn2(c)[k] is _attn2(model)[k] for c in clones for k in _attn2(model))
    assert all(c.model_options is not model.model_options for c in clones[1:])


def test_stacking_is_copy_on_write_and_adds_up(nodes, sd15_setup, tiny_clip_vision, host_models):
    unet, groups, adapter, _ = sd15_setup
    groups2, adapter2 = _load(nodes, host_models, unet, tiny_clip_vision, seed=7)
    images = reference_images(1, seed=11)
    prompt = _prompt(nodes, tiny_clip_vision, seed=11)
    first = apply(nodes, unet.patcher, adapter, prompt, 0.6)
    first_patches = dict(_attn2(first))
    both = apply(nodes, first, adapter2, prompt, 0.9)
    assert _attn2(first) == first_patches and all(len(p.entries) == 1 for p in first_patches.values())
    assert all(len(p.entries) == 2 for p in _attn2(both).values())
    cond, uncond = text_conds(unet)
    ours = host_eps(both, latent(), SIGMA, cond, uncond)
    embeds = twin_clip_inputs(tiny_clip_vision, images, "base")
    twin = twin_with_adapters(unet, [groups, groups2], [0.6, 0.9])
    reference = twin_batch_eps(twin, unet, latent(), cond, uncond, [embeds, embeds])
    for o, r in zip(ours, reference):
        assert_relative_close(o, r)


def test_lora_before_or_after_gives_the_same_prediction(nodes, sd15_setup):
    import comfy.sd

    unet, _, adapter, prompt = sd15_setup
    lora = unet_lora_state_dict(unet, "attn2.to_k")
    lora_then_ipa = apply(nodes, comfy.sd.load_lora_for_models(unet.patcher, None, lora, 1.0, 0)[0], adapter, prompt)
    ipa_then_lora = comfy.sd.load_lora_for_models(apply(nodes, unet.patcher, adapter, prompt), None, lora, 1.0, 0)[0]
    with_lora = _eps(lora_then_ipa, unet)
    assert (with_lora - _eps(apply(nodes, unet.patcher, adapter, prompt), unet)).abs().max() > MIN_EFFECT
    assert (with_lora - _eps(ipa_then_lora, unet)).abs().max() <= EXACT


def test_sdxl_adapter_on_sd15_model_fails_naming_both(nodes, tiny_sd15, tiny_sdxl, tiny_clip_vision, host_models):
    _, xl_adapter = _load(nodes, host_models, tiny_sdxl, tiny_clip_vision)
    with pytest.raises(nodes.core.IncompatibleModelError,
                       match=r"SDXL adapter \(cross-attention dim 2048\) but the model is SD1\.5 \(cross-attention "
                             r"dim 768\); load an adapter made for SD1\.5 models, or use an SDXL checkpoint\."):
        apply(nodes, tiny_sd15.patcher, xl_adapter, _prompt(nodes, tiny_clip_vision))


def test_an_sd2_model_is_named_as_such(nodes, sd15_setup, tiny_clip_vision):
    """SD2.x UNets (context 1024) have no official adapters: the message says so instead of a garbled family."""
    unet, _, adapter, prompt = sd15_setup
    config = type("Config", (), {"unet_config": {"context_dim": 1024}})()
    sd2 = type("Model", (), {"model": type("Base", (), {"diffusion_model": unet.patcher.model.diffusion_model,
                                                        "model_config": config})()})()
    check = nodes.apply.apply.__globals__["check_model"]
    with pytest.raises(nodes.core.IncompatibleModelError,
                       match=r"but the model is SD2\.x \(cross-attention dim 1024\); use an SD1\.5 checkpoint "
                             r"\(IP-Adapter has no official adapters for SD2\.x models\)\."):
        check(sd2, adapter.adapter)


def test_wrong_clip_vision_fails_naming_both_encoders(nodes, sd15_setup, comfy_host):
    unet, _, adapter, _ = sd15_setup
    other = build_tiny_clip_vision(comfy_host.scratch / "configs-other", seed=1, projection_dim=24)
    with torch.inference_mode():
        prompt = nodes.encode.encode(other.host, reference_images(1), "center")[0]
    with pytest.raises(nodes.core.IncompatibleEncodingError, match=r"width 16.*width 24"):
        apply(nodes, unet.patcher, adapter, prompt)


def test_plus_adapter_without_hidden_states_fails(nodes, tiny_sd15, tiny_clip_vision, host_models):
    _, plus = _load(nodes, host_models, tiny_sd15, tiny_clip_vision, kind="plus")
    prompt = _prompt(nodes, tiny_clip_vision)
    core = nodes.core
    stripped = core.ImagePrompt(core.ClipEncoding(prompt.positive.image_embeds, None),
                                core.ClipEncoding(prompt.negative.image_embeds, None))
    with pytest.raises(core.IncompatibleEncodingError, match="hidden_states"):
        apply(nodes, tiny_sd15.patcher, plus, stripped)


def test_style_transfer_on_sdxl_patches_only_the_style_block(nodes, tiny_sdxl, tiny_clip_vision, host_models):
    _, adapter = _load(nodes, host_models, tiny_sdxl, tiny_clip_vision)
    patched = apply(nodes, tiny_sdxl.patcher, adapter, _prompt(nodes, tiny_clip_vision), weight_type="style transfer")
    assert set(_attn2(patched)) == {("output", 1, j) for j in range(10)}


def test_loader_reuses_a_loaded_file_and_hooks_follow_the_host(nodes, sd15_setup, host_models):
    unet, groups, adapter, prompt = sd15_setup
    filename = write_adapter(host_models, groups, "behaviour-reuse_sd15.safetensors")
    assert nodes.load.load(filename)[0] is nodes.load.load(filename)[0]
    patch = next(iter(_attn2(apply(nodes, unet.patcher, adapter, prompt)).values()))
    assert patch.to(torch.float16) is patch and adapter.adapter.dtype == torch.float32
    (holder,) = patch.models()  # the entry's image K/V, not the adapter: its weights are not needed for sampling
    assert holder.model is patch.entries[0].kv.tables


def test_image_kv_is_loaded_by_the_host_model_management(nodes, sd15_setup):
    import comfy.model_management as mm

    unet, _, adapter, prompt = sd15_setup
    model = apply(nodes, unet.patcher, adapter, prompt)
    (holder,) = {id(m): m for m in model.model_patches_models()}.values()
    _eps(model.clone().clone(), unet)
    loaded = [m.model for m in mm.current_loaded_models]
    assert any(m is holder for m in loaded)  # the very holder Apply made, not a clone's copy


def test_unknown_embeds_scaling_fails_before_sampling(nodes, sd15_setup):
    unet, _, adapter, prompt = sd15_setup
    with pytest.raises(nodes.core.InvalidOptionError, match="embeds_scaling 'K only'"):
        apply(nodes, unet.patcher, adapter, prompt, scaling="K only")
