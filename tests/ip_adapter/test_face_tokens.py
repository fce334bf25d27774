"""FaceID tokens (ip_adapter/face_tokens.py) against diffusers' FaceID projections in float64: the same checkpoint
converted by diffusers, fed the way its pipelines feed it (`image_embeds` (2, n, 512), negative zeros first; Plus:
`clip_embeds` (2, n, T, H), negative from zero pixels; v2: `shortcut_scale`), several faces as n images."""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers.models.embeddings import MultiIPAdapterImageProjection  # noqa: E402

from ip_adapter import ClipEncoding, FaceEmbeds, ImagePrompt, IncompatibleEncodingError, IPAdapter  # noqa: E402
from ip_adapter.checkpoint import CheckpointGroups  # noqa: E402
from ip_adapter.face_tokens import faceid_tokens  # noqa: E402
from tests.diffusers_reference import SD15_CONFIG, tiny_unet  # noqa: E402
from tests.factories import (  # noqa: E402
    faceid_plus_shapes,
    faceid_shapes,
    image_proj_shapes,
    random_groups,
    resampler_shapes,
)

TOLERANCE = 1e-5
MIN_EFFECT = 1e-3
F64 = torch.float64
FACE_ID, CROSS, CLIP_HIDDEN, CLIP_TOKENS = 512, 64, 24, 5
#: FaceID Plus runs its perceiver at the cross dim in 64-dim heads.
PLUS_CROSS = 128
FACES = 3
S_SCALE = 1.7
LAYERS, LAYER_WIDTH = 16, 8
#: kind -> (file name, image_proj shapes, cross dim)
KINDS = {
    "faceid": ("ip-adapter-faceid_sd15.bin", faceid_shapes(CROSS, 4), CROSS),
    "faceid-portrait": ("ip-adapter-faceid-portrait-v11_sd15.bin", faceid_shapes(CROSS, 16), CROSS),
    "faceid-plus": ("ip-adapter-faceid-plus_sd15.bin", faceid_plus_shapes(PLUS_CROSS, CLIP_HIDDEN), PLUS_CROSS),
    "faceid-plusv2": ("ip-adapter-faceid-plusv2_sd15.bin", faceid_plus_shapes(PLUS_CROSS, CLIP_HIDDEN), PLUS_CROSS),
    "faceid-portrait-unnorm": ("ip-adapter-faceid-portrait_sdxl_unnorm.bin",
                               resampler_shapes(64, 1, 16, FACE_ID, CROSS), CROSS),
}


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.fixture(scope="module")
def converter() -> torch.nn.Module:
    return tiny_unet(SD15_CONFIG)


@functools.cache
def _pair_of(kind: str, converter: torch.nn.Module) -> tuple[IPAdapter, torch.nn.Module]:
    """Our adapter and diffusers' projection of the same random checkpoint, both float64 (built once per kind)."""
    name, shapes, cross = KINDS[kind]
    groups = random_groups(shapes, [LAYER_WIDTH] * LAYERS, cross, seed=len(kind))
    adapter = IPAdapter.from_groups(CheckpointGroups(name, groups["image_proj"], groups["ip_adapter"]), dtype=F64)
    assert adapter.spec.kind == kind
    projection = converter._convert_ip_adapter_image_proj_to_diffusers(groups["image_proj"], low_cpu_mem_usage=False)
    return adapter, MultiIPAdapterImageProjection([projection.double().eval()])


def _pair(kind: str, converter: torch.nn.Module) -> tuple[IPAdapter, torch.nn.Module]:
    return _pair_of(kind, converter)


def _face_prompt(faces: int, seed: int = 1) -> ImagePrompt:
    """n faces with random (unnormalised, ArcFace-like norm) embeddings and random crop hidden states."""
    raw = _randn(faces, FACE_ID, seed=seed) * 1.3
    hidden = _randn(faces, CLIP_TOKENS, CLIP_HIDDEN, seed=seed + 1)
    zero_pixels = _randn(1, CLIP_TOKENS, CLIP_HIDDEN, seed=seed + 2)
    return ImagePrompt(ClipEncoding(torch.zeros(faces, 0, dtype=F64), hidden),
                       ClipEncoding(torch.zeros(1, 0, dtype=F64), zero_pixels), FaceEmbeds(raw))


def _reference(kind: str, projection: torch.nn.Module, ids: torch.Tensor, prompt: ImagePrompt | None = None,
               hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' (positive, negative) tokens for ids (n, 512), n images, as (1, n*T, C) each."""
    n = ids.shape[0]
    if kind == "faceid-portrait-unnorm":
        embeds = torch.stack([torch.zeros_like(ids), ids])[:, :, None]  # the resampler reads a length-1 sequence
    else:
        embeds = torch.stack([torch.zeros_like(ids), ids])
    if kind.startswith("faceid-plus"):
        layer = projection.image_projection_layers[0]
        negative = prompt.negative.hidden_states.expand(n, -1, -1)
        layer.clip_embeds = torch.stack([negative, hidden])
        layer.shortcut, layer.shortcut_scale = kind == "faceid-plusv2", S_SCALE
    with torch.no_grad():
        out = projection([embeds])[0]  # (2, n, T, C)
    width = out.shape[-1]
    return out[1].reshape(1, -1, width), out[0].reshape(1, -1, width)


def _assert_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("faces", [1, FACES])
def test_concat_tokens_match_diffusers(converter, kind: str, faces: int) -> None:
    adapter, projection = _pair(kind, converter)
    prompt = _face_prompt(faces)
    positive, negative = faceid_tokens(adapter, prompt, "concat", S_SCALE)
    ids = prompt.face.for_kind(kind)
    ref_pos, ref_neg = _reference(kind, projection, ids, prompt, prompt.positive.hidden_states)
    assert positive.shape[1] == faces * adapter.spec.num_tokens  # explicit concatenation, T per face
    _assert_close(positive, ref_pos)
    _assert_close(negative, ref_neg)


def test_unnorm_reads_the_raw_embedding_and_the_others_the_normalised_one(converter) -> None:
    prompt = _face_prompt(1)
    scaled = ImagePrompt(prompt.positive, prompt.negative, prompt.face.map(lambda t: t * 3.0))
    for kind, changes in (("faceid", False), ("faceid-portrait-unnorm", True)):
        adapter, _ = _pair(kind, converter)
        a, b = faceid_tokens(adapter, prompt, "concat")[0], faceid_tokens(adapter, scaled, "concat")[0]
        assert ((a - b).abs().max().item() > MIN_EFFECT) is changes


def test_plusv2_shortcut_scale_moves_the_tokens(converter) -> None:
    adapter, _ = _pair("faceid-plusv2", converter)
    prompt = _face_prompt(1)
    one, other = (faceid_tokens(adapter, prompt, "concat", s)[0] for s in (1.0, S_SCALE))
    assert (one - other).abs().max().item() > MIN_EFFECT
    plus, _ = _pair("faceid-plus", converter)
    assert torch.equal(*(faceid_tokens(plus, prompt, "concat", s)[0] for s in (1.0, S_SCALE)))  # no shortcut in v1


@pytest.mark.parametrize("method, reduce", [("average", lambda t: t.mean(0, keepdim=True)),
                                            ("subtract", lambda t: t[:1] - t[1:].mean(0, keepdim=True))])
@pytest.mark.parametrize("kind", ["faceid", "faceid-plusv2"])
def test_other_methods_combine_faces_before_projection(converter, kind: str, method: str, reduce) -> None:
    adapter, projection = _pair(kind, converter)
    prompt = _face_prompt(FACES)
    positive, negative = faceid_tokens(adapter, prompt, method, S_SCALE)
    ids = reduce(prompt.face.normed())
    ref_pos, ref_neg = _reference(kind, projection, ids, prompt, reduce(prompt.positive.hidden_states))
    assert positive.shape[1] == adapter.spec.num_tokens
    _assert_close(positive, ref_pos)
    _assert_close(negative, ref_neg)


def test_a_prompt_without_face_embeddings_names_encode_face_prompt(converter) -> None:
    adapter, _ = _pair("faceid", converter)
    prompt = _face_prompt(1)
    with pytest.raises(IncompatibleEncodingError, match="Encode Face Prompt"):
        faceid_tokens(adapter, ImagePrompt(prompt.positive, prompt.negative), "concat")


def test_plus_without_crop_encodings_asks_for_clip_vision(converter) -> None:
    adapter, _ = _pair("faceid-plusv2", converter)
    prompt = _face_prompt(1)
    no_clip = ImagePrompt(ClipEncoding(torch.zeros(1, 0), None), ClipEncoding(torch.zeros(1, 0), None), prompt.face)
    with pytest.raises(IncompatibleEncodingError, match="clip_vision input of Encode Face Prompt"):
        faceid_tokens(adapter, no_clip, "concat")


def test_a_non_faceid_adapter_is_refused() -> None:
    groups = random_groups(image_proj_shapes(CROSS, 16, 4), [LAYER_WIDTH] * LAYERS, CROSS)
    adapter = IPAdapter.from_groups(CheckpointGroups("ip-adapter_sd15.bin", groups["image_proj"], groups["ip_adapter"]))
    with pytest.raises(IncompatibleEncodingError, match="Apply IP-Adapter"):
        faceid_tokens(adapter, _face_prompt(1), "concat")
