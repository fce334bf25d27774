"""The core's adapter, layout and decoupled attention inside a UNet equal diffusers' IP-Adapter UNet.

Reference: diffusers loads the official-format state dicts itself (`_load_ip_adapter_weights`) and projects
`added_cond_kwargs["image_embeds"]`. Ours: `IPAdapter` tokens -> `ImageKV` -> `AdapterEntry` -> the shipped
`Attn2Patch` (rows, tables, masks, decoupled attention) on the same UNet's attn2 layers through our layout table,
called with host-style extra_options.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel  # noqa: E402

from ip_adapter.adapter import IPAdapter  # noqa: E402
from ip_adapter.attn2_patch import Attn2Patch, Contribution, reference_attention  # noqa: E402
from ip_adapter.checkpoint import CheckpointGroups  # noqa: E402
from ip_adapter.entry import AdapterEntry  # noqa: E402
from ip_adapter.kv_cache import ImageKV  # noqa: E402
from ip_adapter.layout import SD15_LAYOUT, SDXL_LAYOUT, UNetLayout  # noqa: E402
from ip_adapter.weight_types import LayerRule  # noqa: E402
from tests.diffusers_reference import (  # noqa: E402
    CROSS_DIM,
    LATENT_CHANNELS,
    LATENT_SIZE,
    SD15_CONFIG,
    SD15_WIDTH_FACTOR,
    SDXL_CONFIG,
    SDXL_WIDTH_FACTOR,
    UNetInputs,
    UNetTrio,
    adapter_groups,
    attention_module,
    attn2_names,
    attn2_widths,
    install_patches,
    left_half_latent_mask,
    left_half_mask,
    load_diffusers_adapters,
    run_unet,
    unet_inputs,
    unet_trio,
)
from tests.factories import Shapes, image_proj_shapes, mlp_shapes, resampler_shapes  # noqa: E402

TOLERANCE = 1e-4
EXACT = 1e-6
#: The adapter must move the UNet output by more than this, or the parity checks would prove nothing.
MIN_EFFECT = 1e-2
POSITIVE_CHUNK, NEGATIVE_CHUNK = 0, 1
CLIP_EMBED = 24
CLIP_HIDDEN = 40
CLIP_TOKENS = 5
BASE_TOKENS = 4  # diffusers' ImageProjection supports only 4
PLUS_QUERIES = 16
#: diffusers assumes 64-dim Resampler heads, so the Plus projection uses dim 128 = 2 heads of 64.
PLUS_DIM, PLUS_HEADS = 128, 2
INPUT_SEED = 1


@dataclass(frozen=True)
class Kind:
    """A test adapter family: its `image_proj` shapes and the CLIP input shape of one image."""

    name: str
    image_proj: Shapes
    clip_shape: tuple[int, ...]


BASE = Kind("ip-adapter_tiny.bin", image_proj_shapes(CROSS_DIM, CLIP_EMBED, BASE_TOKENS), (CLIP_EMBED,))
PLUS = Kind("ip-adapter-plus_tiny.bin", resampler_shapes(PLUS_DIM, PLUS_HEADS, PLUS_QUERIES, CLIP_HIDDEN, CROSS_DIM),
            (CLIP_TOKENS, CLIP_HIDDEN))
FULL_FACE = Kind("ip-adapter-full-face_tiny.bin", mlp_shapes(CROSS_DIM, CLIP_HIDDEN), (CLIP_TOKENS, CLIP_HIDDEN))


@dataclass(frozen=True)
class Prompt:
    """One adapter's inputs: the official groups, our adapter, and CLIP inputs of n images. Shape: (n, *clip)."""

    groups: dict[str, dict[str, torch.Tensor]]
    adapter: IPAdapter
    positive: torch.Tensor
    negative: torch.Tensor


def make_prompt(unet: UNet2DConditionModel, kind: Kind, images: int = 1, seed: int = 0) -> Prompt:
    """Random adapter weights and images; the negative is zeros for `image_embeds` (the official convention) and a
    fixed stand-in for the hidden states of a zero image otherwise, repeated for every image."""
    groups = adapter_groups(unet, kind.image_proj, seed)
    adapter = IPAdapter.from_groups(CheckpointGroups(kind.name, groups["image_proj"], groups["ip_adapter"]))
    g = torch.Generator().manual_seed(seed + 1)
    positive = torch.randn(images, *kind.clip_shape, generator=g)
    pooled = len(kind.clip_shape) == 1
    negative = torch.zeros(1, *kind.clip_shape) if pooled else torch.randn(1, *kind.clip_shape, generator=g)
    return Prompt(groups, adapter, positive, negative.expand_as(positive))


def image_embeds(prompt: Prompt, chunks: tuple[int, ...]) -> torch.Tensor:
    """diffusers' input for one adapter: one row per chunk, all n images. Shape: (B, n, *clip)."""
    return torch.stack([prompt.negative if c == NEGATIVE_CHUNK else prompt.positive for c in chunks])


def image_kv(prompt: Prompt, duplicate: bool = False) -> ImageKV:
    """Our tokens: all images of a row concatenated into one sequence (one joint softmax, like diffusers)."""
    with torch.no_grad():
        positive, negative = (prompt.adapter.project(clip=c).reshape(1, -1, CROSS_DIM)
                              for c in (prompt.positive, prompt.negative))
    if duplicate:
        positive, negative = (torch.cat([t, t], dim=1) for t in (positive, negative))
    return ImageKV(prompt.adapter, positive, negative, prompt.adapter.spec.num_tokens)


def entry(kv: ImageKV, weight: float, mask: torch.Tensor | None = None) -> AdapterEntry:
    """Our side of one adapter: the entry Apply builds (full window, V only); `mask` in latent geometry (1, S, S)."""
    return AdapterEntry(kv.adapter, kv, weight, 0.0, 1.0, "V only", mask)


def host_extra(chunks: tuple[int, ...]) -> dict:
    """extra_options as the host passes them outside a sampling run (no sigmas, no run plan)."""
    return {"cond_or_uncond": list(chunks), "original_shape": [len(chunks), LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE]}


@dataclass(frozen=True)
class Case:
    """One parity scenario: adapters with their weights, images per adapter, batch chunks, optional mask."""

    kinds: tuple[Kind, ...]
    weights: tuple[float, ...]
    images: int = 1
    chunks: tuple[int, ...] = (POSITIVE_CHUNK,)
    masked: bool = False


def inputs_for(chunks: tuple[int, ...]) -> UNetInputs:
    """The same latents and text for every run over `chunks` (one batch row per chunk)."""
    return unet_inputs(len(chunks), seed=INPUT_SEED)


def run_reference(unets: UNetTrio, prompts: list[Prompt], case: Case) -> torch.Tensor:
    load_diffusers_adapters(unets.reference, [p.groups for p in prompts], case.weights)
    kwargs = {"cross_attention_kwargs": {"ip_adapter_masks": [left_half_mask()] * len(prompts)}} if case.masked else {}
    embeds = [image_embeds(p, case.chunks) for p in prompts]
    return run_unet(unets.reference, inputs_for(case.chunks), added_cond_kwargs={"image_embeds": embeds}, **kwargs)


def run_ours(unets: UNetTrio, layout: UNetLayout, entries: list[AdapterEntry], chunks: tuple[int, ...]
             ) -> torch.Tensor:
    contributions = tuple(Contribution(e, LayerRule(1.0)) for e in entries)
    install_patches(unets.ours, layout, lambda layer: Attn2Patch(layer.checkpoint_index, contributions,
                                                                 reference_attention), host_extra(chunks))
    return run_unet(unets.ours, inputs_for(chunks))


def run_both(unets: UNetTrio, layout: UNetLayout, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """(diffusers output, our output) for `case`, same weights and inputs."""
    prompts = [make_prompt(unets.plain, kind, case.images, seed=10 * i) for i, kind in enumerate(case.kinds)]
    mask = left_half_latent_mask() if case.masked else None
    entries = [entry(image_kv(p), w, mask) for p, w in zip(prompts, case.weights)]
    return run_reference(unets, prompts, case), run_ours(unets, layout, entries, case.chunks)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def sd15() -> UNetTrio:
    return unet_trio(SD15_CONFIG, seed=0)


@pytest.fixture(scope="module")
def sdxl() -> UNetTrio:
    return unet_trio(SDXL_CONFIG, seed=0)


def plain_output(unets: UNetTrio, chunks: tuple[int, ...] = (POSITIVE_CHUNK,)) -> torch.Tensor:
    return run_unet(unets.plain, inputs_for(chunks))


SD15_CASES = {
    "base": Case((BASE,), (0.7,)),
    "cfg-batch": Case((BASE,), (0.7,), chunks=(NEGATIVE_CHUNK, POSITIVE_CHUNK)),
    "plus": Case((PLUS,), (0.7,)),
    "full-face": Case((FULL_FACE,), (0.7,)),
    "two-adapters": Case((BASE, PLUS), (0.7, 0.4)),
    "three-images-joint": Case((BASE,), (0.8,), images=3),
    "plus-cfg-two-images": Case((PLUS,), (0.6,), images=2, chunks=(NEGATIVE_CHUNK, POSITIVE_CHUNK)),
    "mask": Case((BASE,), (0.9,), masked=True),
}


@pytest.mark.parametrize("case", SD15_CASES.values(), ids=SD15_CASES.keys())
def test_sd15_matches_diffusers(sd15: UNetTrio, case: Case) -> None:
    expected, ours = run_both(sd15, SD15_LAYOUT, case)
    assert max_diff(ours, expected) <= TOLERANCE
    assert max_diff(ours, plain_output(sd15, case.chunks)) > MIN_EFFECT


SDXL_CASES = {
    "base-cfg": Case((BASE,), (0.7,), chunks=(NEGATIVE_CHUNK, POSITIVE_CHUNK)),
    "plus": Case((PLUS,), (0.7,)),
}


@pytest.mark.parametrize("case", SDXL_CASES.values(), ids=SDXL_CASES.keys())
def test_sdxl_matches_diffusers(sdxl: UNetTrio, case: Case) -> None:
    expected, ours = run_both(sdxl, SDXL_LAYOUT, case)
    assert max_diff(ours, expected) <= TOLERANCE
    assert max_diff(ours, plain_output(sdxl, case.chunks)) > MIN_EFFECT


def test_mask_changes_the_reference(sd15: UNetTrio) -> None:
    """Guards the mask case itself: diffusers really applies the mask we pass, so our side has something to match."""
    case = SD15_CASES["mask"]
    prompts = [make_prompt(sd15.plain, BASE)]
    masked = run_reference(sd15, prompts, case)
    unmasked = run_reference(sd15, prompts, Case(case.kinds, case.weights))
    assert max_diff(masked, unmasked) > MIN_EFFECT


def test_weight_zero_equals_plain_unet(sd15: UNetTrio) -> None:
    expected, ours = run_both(sd15, SD15_LAYOUT, Case((BASE,), (0.0,)))
    plain = plain_output(sd15)
    assert max_diff(expected, plain) <= EXACT
    assert max_diff(ours, plain) <= EXACT


def test_duplicated_image_changes_nothing(sd15: UNetTrio) -> None:
    """Concatenating an image's tokens with themselves leaves one joint softmax unchanged."""
    prompt, chunks = make_prompt(sd15.plain, PLUS), (POSITIVE_CHUNK,)
    once = run_ours(sd15, SD15_LAYOUT, [entry(image_kv(prompt), 0.7)], chunks)
    twice = run_ours(sd15, SD15_LAYOUT, [entry(image_kv(prompt, duplicate=True), 0.7)], chunks)
    assert max_diff(once, twice) <= TOLERANCE
    assert max_diff(once, plain_output(sd15)) > MIN_EFFECT


def test_zero_weight_second_adapter_changes_nothing(sd15: UNetTrio) -> None:
    """Adapters at weights [w, 0] equal the first adapter alone at w, on both sides."""
    single, _ = run_both(sd15, SD15_LAYOUT, Case((BASE,), (0.7,)))
    pair_reference, pair_ours = run_both(sd15, SD15_LAYOUT, Case((BASE, PLUS), (0.7, 0.0)))
    assert max_diff(pair_reference, single) <= EXACT
    assert max_diff(pair_ours, single) <= TOLERANCE


LAYOUT_CASES = {"sd15": ("sd15", SD15_LAYOUT, SD15_WIDTH_FACTOR), "sdxl": ("sdxl", SDXL_LAYOUT, SDXL_WIDTH_FACTOR)}


@pytest.mark.parametrize("fixture, layout, width_factor", LAYOUT_CASES.values(), ids=LAYOUT_CASES.keys())
def test_layout_names_every_attn2_layer_once_in_checkpoint_order(
    request: pytest.FixtureRequest, fixture: str, layout: UNetLayout, width_factor: int
) -> None:
    unet = request.getfixturevalue(fixture).plain
    names = attn2_names(unet)
    column = Counter(layer.diffusers_name for layer in layout.layers)
    assert all(column[name] == 1 for name in names)
    assert len(column) == len(names) == layout.num_layers
    assert [layer.diffusers_name for layer in layout.layers] == names
    assert [layer.width for layer in layout.layers] == [w * width_factor for w in attn2_widths(unet)]


@pytest.mark.parametrize("fixture, layout", [("sd15", SD15_LAYOUT), ("sdxl", SDXL_LAYOUT)], ids=["sd15", "sdxl"])
def test_diffusers_loads_each_checkpoint_index_into_our_layer(
    request: pytest.FixtureRequest, fixture: str, layout: UNetLayout
) -> None:
    """diffusers' own conversion puts `<n>.to_k_ip` / `<n>.to_v_ip` on the layer our layout gives index n."""
    unets = request.getfixturevalue(fixture)
    prompt = make_prompt(unets.plain, BASE)
    load_diffusers_adapters(unets.reference, [prompt.groups], [1.0])
    for layer in layout.layers:
        processor = attention_module(unets.reference, layer.diffusers_name).processor
        ours = prompt.adapter.layers[str(layer.checkpoint_index)]
        assert torch.equal(processor.to_k_ip[0].weight, ours["to_k_ip"].weight)
        assert torch.equal(processor.to_v_ip[0].weight, ours["to_v_ip"].weight)
