"""DiT adapters in the real host: off means off, the start/end window, the input model is never changed, foreign dit
patches (before or after ours, and Skip Layer Guidance's) keep working around ours, masks, and the timestep-aware
resampler running once per step. References are the unpatched host model, and diffusers twins with forward hooks that
do what the foreign patch does."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

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
from tests.host.tiny_dit import flux_twin_velocity, sd3_twin_velocity, twin_with_instantx, twin_with_xlabs

EXACT = 1e-6
PARITY = 1e-4
MIN_EFFECT = 1e-2
OFFSET = 0.05
FOREIGN_BLOCK = 1
EARLY_SIGMA, LATE_SIGMA = 0.999, 0.1  # percent ~0 (outside start_at=0.5) and well inside the second half


@pytest.fixture(scope="module", params=["flux", "sd35"])
def family(request, flux, mmdit, tiny_clip_vision, siglip, nodes, dit_files) -> dict:
    """Per family: the tiny model, its adapter, a prompt and the diffusers twin with the adapter at WEIGHT."""
    image = reference_image()
    if request.param == "flux":
        twin = twin_with_xlabs(flux, dit_files.folder, [dit_files.names["v1"]], [WEIGHT])
        embeds = [clip_features(tiny_clip_vision, image)[0][:, None]]
        return dict(kind="flux", tiny=flux, adapter=load(nodes, dit_files, "v1"), twin=twin,
                    prompt=encode(nodes, tiny_clip_vision.host, image),
                    run=lambda t, x, c: flux_twin_velocity(t, x, SIGMA, c.context, c.pooled, embeds))
    twin = twin_with_instantx(mmdit, dit_files.folder, dit_files.names["sd35"], WEIGHT)
    features = siglip_features(siglip, image)
    return dict(kind="sd35", tiny=mmdit, adapter=load(nodes, dit_files, "sd35"), twin=twin,
                prompt=encode(nodes, siglip.host, image, crop="none"),
                run=lambda t, x, c: sd3_twin_velocity(t, x, SIGMA, c.context, c.pooled, features))


def _blocks(twin: torch.nn.Module) -> torch.nn.ModuleList:
    return twin.transformer_blocks


@contextmanager
def hooked(twin: torch.nn.Module, index: int, hook) -> Iterator[None]:
    """A forward hook on the twin's block `index`: hook(kwargs, (txt, img)) -> (txt, img)."""
    handle = _blocks(twin)[index].register_forward_hook(lambda m, a, kw, out: hook(kw, out), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def ramp(img: torch.Tensor) -> torch.Tensor:
    """A per-channel shift (a uniform one would vanish in the next LayerNorm)."""
    return img + OFFSET * torch.linspace(-1.0, 2.0, img.shape[-1], dtype=img.dtype)


class Offset:
    """A foreign dit patch: runs the block below it and shifts the image stream per channel."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, args: dict, extra: dict) -> dict:
        self.calls += 1
        out = extra["original_block"](args)
        return {**out, "img": ramp(out["img"])}

    def __deepcopy__(self, memo: dict) -> Offset:
        return self


def _with_foreign(model, patch):
    patched = model.clone()
    patched.set_model_patch_replace(patch, "dit", "double_block", FOREIGN_BLOCK)
    return patched


def test_weight_zero_and_outside_the_window_equal_the_unpatched_model(family, nodes) -> None:
    tiny, x, cond = family["tiny"], latent(), conds(family["kind"], 2)
    off = apply(nodes, tiny.patcher, family["adapter"], family["prompt"], weight=0.0)
    windowed = apply(nodes, tiny.patcher, family["adapter"], family["prompt"], start_at=0.5, end_at=1.0)
    for sigma, inside in ((EARLY_SIGMA, False), (LATE_SIGMA, True)):
        (base,) = velocity(tiny.patcher, x, sigma, cond)
        assert max_diff(velocity(off, x, sigma, cond)[0], base) <= EXACT
        effect = max_diff(velocity(windowed, x, sigma, cond)[0], base)
        assert effect > MIN_EFFECT if inside else effect <= EXACT


def test_the_input_model_is_unchanged_and_clones_share_the_patch(family, nodes) -> None:
    tiny, x, cond = family["tiny"], latent(), conds(family["kind"], 2)
    before_options = copy.deepcopy(tiny.patcher.model_options)
    (before,) = velocity(tiny.patcher, x, SIGMA, cond)
    patched = apply(nodes, tiny.patcher, family["adapter"], family["prompt"])
    assert tiny.patcher.model_options == before_options
    assert not tiny.patcher.get_wrappers("apply_model", "ip_adapter_dit")
    assert max_diff(velocity(tiny.patcher, x, SIGMA, cond)[0], before) == 0
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", i) for i in range(tiny.depth)}
    clone = patched.clone()
    assert clone.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)] is \
        dit[("double_block", 0)]


@pytest.mark.parametrize("order", ["before", "after"])
def test_a_foreign_dit_patch_before_or_after_ours_runs_around_ours(family, nodes, order) -> None:
    tiny, x, cond, foreign = family["tiny"], latent(), conds(family["kind"], 2), Offset()
    if order == "before":
        model = apply(nodes, _with_foreign(tiny.patcher, foreign), family["adapter"], family["prompt"])
    else:
        model = _with_foreign(apply(nodes, tiny.patcher, family["adapter"], family["prompt"]), foreign)
    (host,) = velocity(model, x, SIGMA, cond)
    assert foreign.calls == 1
    with hooked(family["twin"], FOREIGN_BLOCK, lambda kw, out: (out[0], ramp(out[1]))):
        expected = family["run"](family["twin"], x, cond)
    (ours_only,) = velocity(apply(nodes, tiny.patcher, family["adapter"], family["prompt"]), x, SIGMA, cond)
    assert max_diff(host, expected) <= PARITY
    assert max_diff(host, ours_only) > MIN_EFFECT  # the foreign patch had its effect too


def test_skip_layer_guidance_pass_skips_the_block_with_its_image_term(family, nodes) -> None:
    """Skip Layer Guidance writes `skip` at our keys in a copy of the model options during its extra pass (as
    nodes_slg.py does); the block is skipped, image term included, and every other block keeps its term."""
    import comfy.model_patcher

    tiny, x, cond = family["tiny"], latent(), conds(family["kind"], 2)
    model = apply(nodes, tiny.patcher, family["adapter"], family["prompt"]).clone()
    model.model_options = comfy.model_patcher.set_model_options_patch_replace(
        model.model_options, lambda args, extra: args, "dit", "double_block", 0)
    (host,) = velocity(model, x, SIGMA, cond)
    with hooked(family["twin"], 0, lambda kw, out: (kw["encoder_hidden_states"], kw["hidden_states"])):
        expected = family["run"](family["twin"], x, cond)
    assert max_diff(host, expected) <= PARITY


def test_masks_all_ones_is_unmasked_all_zeros_is_off(family, nodes) -> None:
    tiny, x, cond = family["tiny"], latent(), conds(family["kind"], 2)
    side = 16
    (base,) = velocity(tiny.patcher, x, SIGMA, cond)
    (full,) = velocity(apply(nodes, tiny.patcher, family["adapter"], family["prompt"]), x, SIGMA, cond)
    results = {}
    for name, mask in (("ones", torch.ones(side, side)), ("zeros", torch.zeros(side, side)),
                       ("left", torch.cat([torch.ones(side, side // 2), torch.zeros(side, side // 2)], dim=1))):
        model = apply(nodes, tiny.patcher, family["adapter"], family["prompt"], attn_mask=mask)
        results[name] = velocity(model, x, SIGMA, cond)[0]
    assert max_diff(results["ones"], full) <= EXACT
    assert max_diff(results["zeros"], base) <= EXACT
    assert min(max_diff(results["left"], full), max_diff(results["left"], base)) > MIN_EFFECT


def test_instantx_resampler_runs_once_per_step(mmdit, siglip, nodes, dit_files) -> None:
    adapter = load(nodes, dit_files, "sd35")
    model = apply(nodes, mmdit.patcher, adapter, encode(nodes, siglip.host, reference_image(), crop="none"))
    calls = []
    handle = adapter.adapter.image_proj.register_forward_hook(lambda *a: calls.append(1))
    try:
        velocity(model, latent(), SIGMA, conds("sd35", 2), conds("sd35", 3))
        velocity(model, latent(), SIGMA / 2, conds("sd35", 2), conds("sd35", 3))
    finally:
        handle.remove()
    assert len(calls) == 2  # two steps, two blocks, cond + uncond: one resampler run per step
