"""DiT adapters meet the wrong model, encoder or option: every mismatch fails in Apply IP-Adapter, before sampling,
naming both sides, and leaves the input model untouched. Full-size checks build the released adapters and the
host's full-size FLUX.1-dev / SD3.5 / SD3 transformers on the meta device (no memory, no weights)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from tests.dit_factories import RELEASED, random_groups, random_tensors
from tests.host.dit_setup import *  # noqa: F403  (fixtures)
from tests.host.dit_setup import apply, encode, load, reference_image
from tests.host.ipa_setup import adapter_groups, write_adapter

FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38,
                axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)


def _mmdit(depth: int, qk_norm: str | None, dual_attention: int = 0) -> dict:
    return dict(in_channels=16, patch_size=2, out_channels=16, depth=depth, input_size=None, adm_in_channels=2048,
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": 4096, "out_features": 64 * depth}},
                num_patches=36864, pos_embed_max_size=192, qk_norm=qk_norm, pos_embed_scaling_factor=None,
                x_block_self_attn_layers=list(range(dual_attention)))


#: How a mismatch message names each model.
MODEL_WORDS = {"FLUX.1-dev": "FLUX.1 model (19 double blocks", "SD3.5 Large": "SD3.5 Large (38 joint blocks",
               "SD3.5 Medium": "SD3 / SD3.5 Medium (24 joint blocks", "SD3 Medium": "SD3 / SD3.5 Medium (24 joint"}
MODELS = {"FLUX.1-dev": ("Flux", FLUX_DEV), "SD3.5 Large": ("SD3", _mmdit(38, "rms")),
          "SD3.5 Medium": ("SD3", _mmdit(24, "rms", dual_attention=13)), "SD3 Medium": ("SD3", _mmdit(24, None))}


def _meta_model(name: str):
    import comfy.model_patcher
    import comfy.supported_models

    config_class, unet_config = MODELS[name]
    config = getattr(comfy.supported_models, config_class)(dict(unet_config))
    config.set_inference_dtype(torch.bfloat16, None)
    model = config.get_model({}, device="meta")
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                            size=1)


def _meta_adapter(host_pack, released):
    from_groups = host_pack.module.ip_adapter.IPAdapter.from_groups
    checkpoint = host_pack.module.ip_adapter.checkpoint
    if "image_proj" in released.shapes:
        groups = random_groups(released.shapes, device="meta")
        split = checkpoint.CheckpointGroups(released.filename, groups["image_proj"], groups["ip_adapter"])
    else:
        split = checkpoint.group_keys(random_tensors(released.shapes, device="meta"), released.filename)
    return from_groups(split, dtype=torch.bfloat16, device="meta")


@pytest.mark.parametrize(("released", "model", "fits"), [
    (RELEASED[0], "FLUX.1-dev", True), (RELEASED[1], "FLUX.1-dev", True), (RELEASED[2], "SD3.5 Large", True),
    (RELEASED[2], "SD3.5 Medium", False), (RELEASED[2], "SD3 Medium", False), (RELEASED[0], "SD3.5 Large", False),
    (RELEASED[2], "FLUX.1-dev", False)], ids=lambda v: getattr(v, "kind", v))
def test_released_adapters_on_full_size_models(host_pack, released, model, fits) -> None:
    target_module = host_pack.module.nodes.dit.target
    adapter = _meta_adapter(host_pack, released)
    patcher = _meta_model(model)
    if fits:
        target = target_module.check_dit_model(patcher, adapter)
        assert target.num_blocks == released.num_blocks
        return
    with pytest.raises(host_pack.module.ip_adapter.IncompatibleModelError) as error:
        target_module.check_dit_model(patcher, adapter)
    message = str(error.value)
    assert released.filename in message and released.family in message
    assert MODEL_WORDS[model] in message


@pytest.fixture(scope="module")
def sd15_adapter(host_models, tiny_sd15, tiny_clip_vision, nodes):
    name = write_adapter(host_models, adapter_groups("base", tiny_sd15, tiny_clip_vision), "tiny_sd15_for_dit.bin")
    return nodes.load.load(name)[0]


def _raises(nodes, model, adapter, prompt, error, *words, **options) -> None:
    before = copy.deepcopy(model.model_options)
    with pytest.raises(error) as caught:
        apply(nodes, model, adapter, prompt, **options)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))
    assert model.model_options == before


def test_model_mismatches_name_both_sides(host_pack, nodes, dit_files, flux, mmdit, tiny_sdxl, tiny_clip_vision,
                                          siglip, sd15_adapter, comfy_host) -> None:
    from tests.host.tiny_dit import build_tiny_mmdit, cached

    errors = host_pack.module.ip_adapter
    xlabs, instantx = load(nodes, dit_files, "v1"), load(nodes, dit_files, "sd35")
    clip_prompt = encode(nodes, tiny_clip_vision.host, reference_image())
    siglip_prompt = encode(nodes, siglip.host, reference_image(), crop="none")
    deeper = cached("tiny_mmdit_depth3", lambda: build_tiny_mmdit(depth=3))
    _raises(nodes, tiny_sdxl.patcher, xlabs, clip_prompt, errors.IncompatibleModelError, "FLUX.1", "SDXL")
    _raises(nodes, flux.patcher, instantx, siglip_prompt, errors.IncompatibleModelError, "SD3.5 Large", "FLUX.1")
    _raises(nodes, mmdit.patcher, xlabs, clip_prompt, errors.IncompatibleModelError, "FLUX.1", "joint blocks")
    _raises(nodes, deeper.patcher, instantx, siglip_prompt, errors.IncompatibleModelError, "2 blocks", "3 joint blocks")
    _raises(nodes, flux.patcher, sd15_adapter, clip_prompt, errors.IncompatibleModelError, "SD1.5", "FLUX.1 model")


def test_encoder_and_option_mismatches_fail_before_patching(host_pack, nodes, dit_files, flux, mmdit,
                                                            tiny_clip_vision, siglip) -> None:
    errors = host_pack.module.ip_adapter
    xlabs, instantx = load(nodes, dit_files, "v1"), load(nodes, dit_files, "sd35")
    clip_prompt = encode(nodes, tiny_clip_vision.host, reference_image())
    siglip_prompt = encode(nodes, siglip.host, reference_image(), crop="none")
    _raises(nodes, flux.patcher, xlabs, siglip_prompt, errors.IncompatibleEncodingError, "ip_adapter.safetensors",
            "width 32")
    _raises(nodes, mmdit.patcher, instantx, clip_prompt, errors.IncompatibleEncodingError, "ip-adapter.bin")
    for weight_type in ("style transfer", "weak middle"):
        _raises(nodes, flux.patcher, xlabs, clip_prompt, errors.InvalidOptionError, weight_type, "FLUX.1",
                weight_type=weight_type)
    _raises(nodes, mmdit.patcher, instantx, siglip_prompt, errors.InvalidOptionError, "V only", scaling="K+V")
    _raises(nodes, flux.patcher, xlabs, clip_prompt, errors.InvalidOptionError, "start_at", start_at=0.8, end_at=0.2)


def test_load_ip_adapter_names_the_family(nodes, dit_files, caplog) -> None:
    with caplog.at_level(logging.INFO):
        loaded = {key: load(nodes, dit_files, key) for key in ("v1", "v2", "sd35")}
    described = {key: value.adapter.spec.describe() for key, value in loaded.items()}
    assert described["v1"].startswith("FLUX.1 xlabs-v1") and described["v2"].startswith("FLUX.1 xlabs-v2")
    assert described["sd35"].startswith("SD3.5 Large instantx")
    assert any("FLUX.1 xlabs-v2" in record.getMessage() for record in caplog.records)
