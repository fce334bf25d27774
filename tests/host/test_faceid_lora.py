"""The FaceID LoRA through the host's own LoRA loading: Apply IP-Adapter FaceID at lora_strength s patches exactly
what `comfy.sd.load_lora_for_models` patches from diffusers' own renaming of the same keys at s (W + s up@down), every
module mapped and no "lora key not loaded" (tiny and full-size UNets); s = 0 leaves the model untouched. Plus the
routing between the two Apply nodes."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from tests.diffusers_reference import attn2_widths
from tests.factories import faceid_shapes, layer_shapes, lora_shapes, materialize
from tests.host.faceid_setup import (
    LORA_RANK,
    FaceNodes,
    apply_faceid,
    faceid_groups,
    fan_in_tensors,
    write_faceid_adapter,
)
from tests.host.ipa_setup import adapter_groups, reference_images, write_adapter
from tests.host.test_full_size import FULL_CONFIGS
from tests.host.tiny_models import diffusers_to_ldm, ldm_layout

STRENGTH = 0.45
OFFICIAL_RANK = 128
#: attention processors (attn1 + attn2) and LoRA'd modules (q, k, v, out each) per family
PROCESSORS = {"sd15": 32, "sdxl": 140, "SD1.5": 32, "SDXL": 140}
NOT_LOADED = ("lora key not loaded", "NOT LOADED")


@pytest.fixture(scope="module")
def nodes(host_pack) -> FaceNodes:
    return FaceNodes.of(host_pack)


def _face_prompt(core, faces: int = 1):
    embeds = torch.randn(faces, 512, generator=torch.Generator().manual_seed(faces))
    empty = core.ClipEncoding(torch.zeros(faces, 0), None)
    return core.ImagePrompt(empty, core.ClipEncoding(torch.zeros(1, 0), None), core.FaceEmbeds(embeds))


def _in_memory_adapter(core, unet):
    """A FaceID adapter with a real LoRA and everything else on the meta device (the LoRA glue reads only the LoRA)."""
    widths, cross = attn2_widths(unet.diffusers), unet.context_dim
    ip_adapter = {**materialize(layer_shapes(widths, cross)),
                  **fan_in_tensors(lora_shapes(widths, cross, rank=LORA_RANK), seed=3)}
    groups = {"image_proj": materialize(faceid_shapes(cross, 4)), "ip_adapter": ip_adapter}
    name = f"ip-adapter-faceid_{unet.kind}.bin"
    checkpoint = core.checkpoint.CheckpointGroups(name, groups["image_proj"], ip_adapter)
    return groups, core.IPAdapter.from_groups(checkpoint, device="meta")


def _not_loaded(records) -> list[str]:
    return [r.getMessage() for r in records if any(m in r.getMessage() for m in NOT_LOADED)]


def _same_patches(ours, reference) -> None:
    assert ours.patches.keys() == reference.patches.keys()
    for key, patches in ours.patches.items():
        (s1, a1, m1, o1, f1), = patches
        (s2, a2, m2, o2, f2), = reference.patches[key]
        assert (s1, m1, o1, f1) == (s2, m2, o2, f2)
        up_down = zip(a1.weights[:2], a2.weights[:2])
        assert all(x is y for x, y in up_down) and a1.weights[2:] == a2.weights[2:]  # the file's tensors, no alpha


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_lora_equals_the_hosts_loader_on_diffusers_keys(nodes, kind, request, caplog) -> None:
    import comfy.sd

    unet = request.getfixturevalue(f"tiny_{kind}")
    groups, adapter = _in_memory_adapter(nodes.core, unet)
    glue = nodes.module.nodes.faceid_lora
    with caplog.at_level(logging.WARNING):
        ours = glue.apply_faceid_lora(unet.patcher, adapter, STRENGTH)
    assert not _not_loaded(caplog.records)
    diffusers_keys = unet.diffusers._load_ip_adapter_loras([groups])[0]  # diffusers' own renaming
    reference, _ = comfy.sd.load_lora_for_models(unet.patcher, None, diffusers_keys, STRENGTH, 0)
    assert len(ours.patches) == 4 * PROCESSORS[kind] and ours is not unet.patcher
    _same_patches(ours, reference)
    assert not unet.patcher.patches  # the input model is unchanged


def test_the_node_applies_w_plus_s_up_down_and_zero_means_not_applied(nodes, host_models, tiny_sd15,
                                                                      tiny_clip_vision, caplog) -> None:
    import comfy.lora

    groups = faceid_groups("faceid", tiny_sd15, tiny_clip_vision, seed=5)
    adapter = nodes.load.load(write_faceid_adapter(host_models, groups, "faceid", "sd15", tag="lora"))[0]
    prompt = _face_prompt(nodes.core)
    with caplog.at_level(logging.WARNING):
        lora_only = apply_faceid(nodes, tiny_sd15.patcher, adapter, prompt, weight=0.0, lora=STRENGTH)
    assert not _not_loaded(caplog.records)
    assert "patches_replace" not in lora_only.model_options["transformer_options"]  # weight 0: no image tokens
    lora = tiny_sd15.diffusers._load_ip_adapter_loras([groups])[0]
    weights = tiny_sd15.patcher.model.state_dict()
    for key, patches in lora_only.patches.items():
        adapter_patch = patches[0][1]
        up, down = (t.double() for t in adapter_patch.weights[:2])
        found = comfy.lora.calculate_weight(patches, weights[key].clone().float(), key)
        expected = weights[key].double() + STRENGTH * up @ down
        assert (found.double() - expected).abs().max() <= 1e-5
    assert len(lora_only.patches) == len(lora) // 2 == 4 * PROCESSORS["sd15"]
    untouched = apply_faceid(nodes, tiny_sd15.patcher, adapter, prompt, weight=0.0, lora=0.0)
    assert not untouched.patches and untouched is not tiny_sd15.patcher
    assert "patches_replace" not in untouched.model_options["transformer_options"]
    with_tokens = apply_faceid(nodes, tiny_sd15.patcher, adapter, prompt, weight=1.0, lora=0.0)
    assert not with_tokens.patches and len(with_tokens.model_options["transformer_options"]["patches_replace"][
        "attn2"]) == 16


@pytest.fixture(scope="module", params=sorted(FULL_CONFIGS))
def full_size(request, comfy_host):
    """The host's key map for a full-size UNet of the family, built on the meta device, and its weights' shapes."""
    import comfy.lora
    import comfy.model_detection
    from diffusers import UNet2DConditionModel

    config = FULL_CONFIGS[request.param]
    with torch.device("meta"):
        twin = UNet2DConditionModel(**config)
    ldm = diffusers_to_ldm(twin.state_dict(), ldm_layout(config))
    unet_config = comfy.model_detection.detect_unet_config(ldm, "")
    sd = {f"diffusion_model.{k}": v for k, v in ldm.items()}
    model = SimpleNamespace(state_dict=lambda: sd, model_config=SimpleNamespace(unet_config=unet_config))
    return request.param, comfy.lora.model_lora_keys_unet(model, {}), sd


def test_full_size_official_lora_maps_every_module_with_matching_shapes(host_pack, full_size, caplog) -> None:
    import comfy.lora

    family, key_map, weights = full_size
    core = host_pack.module.ip_adapter
    layout = core.LAYOUTS[core.BaseFamily(family)]
    shapes = lora_shapes([layer.width for layer in layout.layers], layout.cross_attention_dim, rank=OFFICIAL_RANK)
    converted = host_pack.module.ip_adapter.faceid_lora.diffusers_lora(materialize(shapes), layout, "official.bin")
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(converted, key_map)
    assert not _not_loaded(caplog.records)
    assert len(patches) == 4 * PROCESSORS[family] == len(shapes) // 2
    for target, patch in patches.items():
        up, down = patch.weights[:2]
        assert (up.shape[0], down.shape[1]) == tuple(weights[target].shape), target


def test_apply_ip_adapter_sends_faceid_adapters_to_the_faceid_node(nodes, host_models, tiny_sd15,
                                                                   tiny_clip_vision) -> None:
    groups = faceid_groups("faceid", tiny_sd15, tiny_clip_vision, seed=5)
    faceid = nodes.load.load(write_faceid_adapter(host_models, groups, "faceid", "sd15", tag="lora"))[0]
    with torch.inference_mode():
        prompt = nodes.encode.encode(tiny_clip_vision.host, reference_images(1), "center")[0]
    with pytest.raises(nodes.core.IncompatibleEncodingError, match="Apply IP-Adapter FaceID"):
        nodes.apply.apply(tiny_sd15.patcher, faceid, prompt, 1.0, "linear", "concat", 0.0, 1.0, "V only")
    with pytest.raises(nodes.core.IncompatibleEncodingError, match="Encode Face Prompt"):
        apply_faceid(nodes, tiny_sd15.patcher, faceid, prompt)  # a CLIP image prompt has no face embeddings
    base = nodes.load.load(write_adapter(host_models, adapter_groups("base", tiny_sd15, tiny_clip_vision),
                                         "faceid-routing-base_sd15.safetensors"))[0]
    with pytest.raises(nodes.core.IncompatibleEncodingError, match="use Apply IP-Adapter with Encode Image Prompt"):
        apply_faceid(nodes, tiny_sd15.patcher, base, _face_prompt(nodes.core))
