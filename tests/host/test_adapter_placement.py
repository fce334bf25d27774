"""Where the adapter's math runs and which file version is served: projection through the host's model management in
the device's compute dtype (never fp16 on the CPU), a partially loaded adapter still projecting, a replaced file
never served from the cache, and a start/end pair in the wrong order refused at Apply."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from tests.factories import flat
from tests.host.ipa_setup import PackNodes, adapter_groups, apply, reference_images, write_adapter


@pytest.fixture(scope="module")
def nodes(host_pack) -> PackNodes:
    return PackNodes.of(host_pack)


@pytest.fixture(scope="module")
def plus(nodes, tiny_sd15, tiny_clip_vision, host_models):
    groups = adapter_groups("plus", tiny_sd15, tiny_clip_vision, seed=31)
    return groups, write_adapter(host_models, groups, "placement-plus_sd15.safetensors")


def _prompt(nodes, clip):
    with torch.inference_mode():
        return nodes.encode.encode(clip.host, reference_images(1), "center")[0]


def _tokens(host_pack, loaded, prompt) -> torch.Tensor:
    module = host_pack.module.nodes.apply_ip_adapter
    return module.image_tokens(loaded, prompt, "concat")[0]


def test_a_half_precision_adapter_projects_in_float32_on_the_cpu(host_pack, nodes, plus, tiny_clip_vision,
                                                                  host_models):
    """An fp16 file (as published) keeps its dtype in storage; on the CPU its Resampler still runs in float32."""
    groups, _ = plus
    half_groups = {g: {k: t.half() for k, t in sd.items()} for g, sd in groups.items()}
    half = nodes.load.load(write_adapter(host_models, half_groups, "placement-plus-fp16_sd15.safetensors"))[0]
    assert half.adapter.dtype == torch.float16  # stored as the file holds it: loading costs what reading costs
    prompt = _prompt(nodes, tiny_clip_vision)
    tokens = _tokens(host_pack, half, prompt)
    assert tokens.dtype == torch.float32
    reference = copy.deepcopy(half.adapter).float()  # float32 math on the same fp16-rounded weights
    expected = reference.project(clip=prompt.positive.hidden_states)
    assert (tokens - expected.reshape(tokens.shape)).abs().max() <= 1e-5


def test_a_partially_loaded_adapter_still_projects(host_pack, nodes, plus, tiny_clip_vision, tiny_sd15):
    """Low-VRAM loading leaves some weights where they were; simulated here by giving part of the projection another
    dtype (the CPU has one device). Projection and a second Apply keep working and give the same tokens."""
    _, filename = plus
    loaded = nodes.load.load(filename)[0]
    prompt = _prompt(nodes, tiny_clip_vision)
    before = _tokens(host_pack, loaded, prompt)
    proj_in = loaded.adapter.image_proj.proj_in
    proj_in.to(torch.bfloat16)
    try:
        after = _tokens(host_pack, loaded, prompt)
        model = apply(nodes, tiny_sd15.patcher, loaded, prompt, 0.5)
    finally:
        proj_in.to(torch.float32)
    assert model is not None
    assert (after - before).abs().max() <= 5e-2  # bf16 rounding of proj_in only


def test_a_replaced_file_of_the_same_size_and_time_is_reloaded(nodes, tiny_sd15, tiny_clip_vision, host_models):
    first = adapter_groups("base", tiny_sd15, tiny_clip_vision, seed=41)
    second = adapter_groups("base", tiny_sd15, tiny_clip_vision, seed=42)
    filename = write_adapter(host_models, first, "replaced_sd15.safetensors")
    path = host_models.folder("ipadapter") / filename
    a = nodes.load.load(filename)[0]
    stat = os.stat(path)
    write_adapter(host_models, second, "replaced_sd15.safetensors")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size and os.stat(path).st_mtime_ns == stat.st_mtime_ns
    b = nodes.load.load(filename)[0]
    assert b is not a
    expected = flat({"image_proj": second["image_proj"]})["image_proj.proj.weight"]
    assert torch.equal(b.adapter.image_proj.proj.weight, expected)
    assert nodes.load.load(filename)[0] is b  # an unchanged file is still served from the cache


def test_start_after_end_is_refused_at_apply(nodes, plus, tiny_sd15, tiny_clip_vision):
    _, filename = plus
    loaded = nodes.load.load(filename)[0]
    with pytest.raises(nodes.core.InvalidOptionError, match="start_at"):
        apply(nodes, tiny_sd15.patcher, loaded, _prompt(nodes, tiny_clip_vision), 0.5, start_at=0.8, end_at=0.2)


def test_the_host_counts_and_moves_the_image_kv_not_the_adapter(nodes, plus, tiny_sd15, tiny_clip_vision):
    """What the host's model management loads with the patched model is the K/V of every patched layer (exactly
    their bytes), in the model's dtype, as frozen parameters; the adapter's weights are not needed for sampling."""
    import comfy.model_management as mm

    _, filename = plus
    loaded = nodes.load.load(filename)[0]
    model = apply(nodes, tiny_sd15.patcher, loaded, _prompt(nodes, tiny_clip_vision), 0.7)
    extra = {id(m): m for m in model.model_patches_models()}
    assert loaded.patcher not in extra.values()
    (holder,) = extra.values()
    tables = holder.model
    layers = len(model.model_options["transformer_options"]["patches_replace"]["attn2"])
    assert len(tables.k) == len(tables.v) == layers
    expected = sum(t.numel() * t.element_size() for t in tables.parameters())
    assert holder.model_size() == expected > 0
    assert all(t.dtype == tiny_sd15.patcher.model.get_dtype() and not t.requires_grad for t in tables.parameters())
    mm.load_models_gpu([model])
    assert all(t.device == model.load_device for t in tables.parameters())
