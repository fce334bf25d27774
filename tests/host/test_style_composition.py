"""Apply IP-Adapter Style & Composition in the host: exactly two stacked Apply IP-Adapter nodes (style transfer or
strong style transfer with the style prompt, composition with the composition prompt), on SD1.5 and SDXL; each
weight only moves its own prompt."""

from __future__ import annotations

import pytest
import torch

from tests.host.ipa_setup import PackNodes, adapter_groups, apply, reference_images, write_adapter
from tests.host.test_apply_behaviour import _eps
from tests.host.tiny_models import SD15, SDXL

EXACT = 1e-6
MIN_EFFECT = 1e-3
WEIGHT_STYLE, WEIGHT_COMPOSITION = 0.8, 1.3


@pytest.fixture(scope="module")
def nodes(host_pack) -> PackNodes:
    return PackNodes.of(host_pack)


@pytest.fixture(scope="module")
def prompts(nodes, tiny_clip_vision):
    with torch.inference_mode():
        return tuple(nodes.encode.encode(tiny_clip_vision.host, reference_images(n, seed), "center")[0]
                     for n, seed in ((1, 21), (2, 22), (1, 23)))


def _adapter(nodes, host_models, unet, clip):
    name = write_adapter(host_models, adapter_groups("plus", unet, clip, seed=7), f"sc-plus_{unet.kind}.safetensors")
    return nodes.load.load(name)[0]


def _style_composition(host_pack, model, adapter, style, composition, expand, w_style=WEIGHT_STYLE,
                       w_composition=WEIGHT_COMPOSITION):
    node = host_pack.registered["ApplyIPAdapterStyleComposition"]()
    with torch.inference_mode():
        return node.apply(model, adapter, style, composition, w_style, w_composition, expand, "concat", 0.0, 1.0,
                          "V only")[0]


@pytest.mark.parametrize(("kind", "expand"), [(SD15, False), (SD15, True), (SDXL, False)])
def test_equals_two_stacked_apply_nodes(kind, expand, request, host_pack, nodes, host_models, tiny_clip_vision,
                                        prompts) -> None:
    unet = request.getfixturevalue(f"tiny_{kind}")
    adapter = _adapter(nodes, host_models, unet, tiny_clip_vision)
    style, composition = prompts[0], prompts[1]
    ours = _eps(_style_composition(host_pack, unet.patcher, adapter, style, composition, expand), unet)
    style_type = "strong style transfer" if expand else "style transfer"
    stacked = apply(nodes, apply(nodes, unet.patcher, adapter, style, WEIGHT_STYLE, style_type), adapter,
                    composition, WEIGHT_COMPOSITION, "composition")
    assert (ours - _eps(stacked, unet)).abs().max() <= EXACT
    assert (ours - _eps(unet.patcher, unet)).abs().max() > MIN_EFFECT


def test_each_weight_moves_only_its_own_prompt(host_pack, nodes, host_models, tiny_sd15, tiny_clip_vision,
                                                prompts) -> None:
    adapter = _adapter(nodes, host_models, tiny_sd15, tiny_clip_vision)
    a, b, c = prompts

    def eps(style, composition, w_style=WEIGHT_STYLE, w_composition=WEIGHT_COMPOSITION):
        model = _style_composition(host_pack, tiny_sd15.patcher, adapter, style, composition, False, w_style,
                                   w_composition)
        return _eps(model, tiny_sd15)

    style_only, composition_only, both = eps(a, b, w_composition=0.0), eps(a, b, w_style=0.0), eps(a, b)
    assert (style_only - eps(a, c, w_composition=0.0)).abs().max() <= EXACT  # composition prompt ignored at 0
    assert (composition_only - eps(c, b, w_style=0.0)).abs().max() <= EXACT  # style prompt ignored at 0
    assert (both - style_only).abs().max() > MIN_EFFECT and (both - composition_only).abs().max() > MIN_EFFECT
    both_off = _style_composition(host_pack, tiny_sd15.patcher, adapter, a, b, False, 0.0, 0.0)
    assert both_off is not tiny_sd15.patcher
    assert both_off.model_options == tiny_sd15.patcher.model_options  # a clone with nothing patched
