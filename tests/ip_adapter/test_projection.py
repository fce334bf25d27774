"""Projection models against hand-written float64 re-implementations of checkpoints.md §7.1 on the same random
weights; Resampler head count from to_q; encoder mismatches reported by IPAdapter.project."""

from __future__ import annotations

import math
from typing import Mapping

import pytest
import torch
from torch import nn

from ip_adapter import IncompatibleEncodingError, IPAdapter
from ip_adapter.checkpoint import CheckpointGroups
from ip_adapter.projection import FaceIDProjModel, ImageProjModel, MLPProjModel, ProjPlusModel
from ip_adapter.resampler import Resampler
from tests.factories import (
    OFFICIAL,
    faceid_plus_shapes,
    faceid_shapes,
    image_proj_shapes,
    materialize,
    mlp_shapes,
    random_groups,
    resampler_shapes,
)

TOLERANCE = 1e-5
#: A change that matters: far above float error, far below the outputs' unit scale.
MIN_EFFECT = 1e-3
LN_EPS = 1e-5
RESAMPLER_HEAD_DIM = 64
BATCH = 2
CROSS, EMBED, TOKENS = 8, 12, 4
CLIP_SEQ = 5
RES_DIM, RES_HEADS, RES_QUERIES, RES_DEPTH = 16, 2, 4, 2
FACE_ID_DIM, PORTRAIT_TOKENS, FACES = 16, 16, 3
#: ProjPlusModel's perceiver runs at the cross dim with 64-dim heads, so the cross dim is a multiple of 64.
PLUS_CROSS = 2 * RESAMPLER_HEAD_DIM
SD15_LAYERS, LAYER_WIDTH = 16, 8
VIT_H_EMBEDS, VIT_BIGG_EMBEDS, VIT_H_HIDDEN, VIT_BIGG_HIDDEN = 1024, 1280, 1280, 1664
CLIP_TOKENS = 257
SD = Mapping[str, torch.Tensor]


def _weights(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    return materialize(shapes, "cpu", generator=torch.Generator().manual_seed(seed))


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _build(cls: type[nn.Module], sd: SD) -> nn.Module:
    """The module in float64, so that the comparison measures the formulas, not float32 rounding."""
    module = cls.from_state_dict(sd)
    module.load_state_dict(sd, strict=True)
    return module.double().requires_grad_(False).eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# --- float64 reference formulas -------------------------------------------------------------------------------------


def _w(sd: SD, key: str) -> torch.Tensor:
    return sd[key].double()


def linear(x: torch.Tensor, sd: SD, prefix: str, bias: bool = True) -> torch.Tensor:
    out = x @ _w(sd, f"{prefix}.weight").T
    return out + _w(sd, f"{prefix}.bias") if bias else out


def layer_norm(x: torch.Tensor, sd: SD, prefix: str) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + LN_EPS) * _w(sd, f"{prefix}.weight") + _w(sd, f"{prefix}.bias")


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def ref_image_proj(sd: SD, embeds: torch.Tensor, tokens: int, cross: int) -> torch.Tensor:
    x = linear(embeds.double(), sd, "proj").reshape(-1, tokens, cross)
    return layer_norm(x, sd, "norm")


def ref_mlp(sd: SD, hidden: torch.Tensor) -> torch.Tensor:
    x = linear(gelu(linear(hidden.double(), sd, "proj.0")), sd, "proj.2")
    return layer_norm(x, sd, "proj.3")


def ref_faceid(sd: SD, face_id: torch.Tensor, tokens: int, cross: int) -> torch.Tensor:
    """(B, 512) -> (B, N, C); (B, n, 512) -> (B, n*N, C), face by face."""
    batch = face_id.shape[0]
    x = linear(gelu(linear(face_id.double(), sd, "proj.0")), sd, "proj.2")
    return layer_norm(x.reshape(batch, -1, tokens, cross), sd, "norm").reshape(batch, -1, cross)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, inner = t.shape
    return t.reshape(b, n, heads, inner // heads).transpose(1, 2)


def ref_perceiver_attention(sd: SD, p: str, x: torch.Tensor, latents: torch.Tensor, heads: int) -> torch.Tensor:
    xn, ln = layer_norm(x, sd, f"{p}.norm1"), layer_norm(latents, sd, f"{p}.norm2")
    q = linear(ln, sd, f"{p}.to_q", bias=False)
    kv = linear(torch.cat([xn, ln], dim=1), sd, f"{p}.to_kv", bias=False)
    k, v = kv[..., : q.shape[-1]], kv[..., q.shape[-1]:]
    q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    weights = softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]))
    out = (weights @ v).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
    return linear(out, sd, f"{p}.to_out", bias=False)


def ref_feed_forward(sd: SD, p: str, x: torch.Tensor) -> torch.Tensor:
    h = gelu(linear(layer_norm(x, sd, f"{p}.0"), sd, f"{p}.1", bias=False))
    return linear(h, sd, f"{p}.3", bias=False)


def ref_resampler(sd: SD, hidden: torch.Tensor, heads: int, depth: int,
                  latents: torch.Tensor | None = None) -> torch.Tensor:
    x = linear(hidden.double(), sd, "proj_in")
    lat = _w(sd, "latents").expand(x.shape[0], -1, -1) if latents is None else latents.double()
    for layer in range(depth):
        lat = ref_perceiver_attention(sd, f"layers.{layer}.0", x, lat, heads) + lat
        lat = ref_feed_forward(sd, f"layers.{layer}.1", lat) + lat
    return layer_norm(linear(lat, sd, "proj_out"), sd, "norm_out")


def _sub(sd: SD, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def ref_proj_plus(sd: SD, face_id: torch.Tensor, hidden: torch.Tensor, tokens: int, cross: int, depth: int,
                  shortcut: bool, s_scale: float) -> torch.Tensor:
    x = ref_faceid(sd, face_id, tokens, cross)
    out = ref_resampler(_sub(sd, "perceiver_resampler."), hidden, cross // RESAMPLER_HEAD_DIM, depth, latents=x)
    return x + s_scale * out if shortcut else out


# --- modules against the references ---------------------------------------------------------------------------------


def test_image_proj_model() -> None:
    sd = _weights(image_proj_shapes(CROSS, EMBED, TOKENS))
    embeds = _rand(BATCH, EMBED, seed=1)
    out = _build(ImageProjModel, sd)(embeds)
    assert out.shape == (BATCH, TOKENS, CROSS)
    assert _max_diff(out, ref_image_proj(sd, embeds, TOKENS, CROSS)) <= TOLERANCE


def test_mlp_proj_model_projects_every_token() -> None:
    sd = _weights(mlp_shapes(CROSS, EMBED))
    hidden = _rand(BATCH, CLIP_SEQ, EMBED, seed=1)
    out = _build(MLPProjModel, sd)(hidden)
    assert out.shape == (BATCH, CLIP_SEQ, CROSS)
    assert _max_diff(out, ref_mlp(sd, hidden)) <= TOLERANCE


_RESAMPLER_SHAPES = resampler_shapes(RES_DIM, RES_HEADS, RES_QUERIES, EMBED, CROSS, depth=RES_DEPTH)


def test_resampler() -> None:
    sd = _weights(_RESAMPLER_SHAPES)
    hidden = _rand(BATCH, CLIP_SEQ, EMBED, seed=1)
    out = _build(Resampler, sd)(hidden)
    assert out.shape == (BATCH, RES_QUERIES, CROSS)
    assert _max_diff(out, ref_resampler(sd, hidden, RES_HEADS, RES_DEPTH)) <= TOLERANCE


def test_resampler_heads_come_from_to_q_rows() -> None:
    sd = _weights(_RESAMPLER_SHAPES)
    module = _build(Resampler, sd)
    attentions = [layer[0] for layer in module.layers]
    assert len(attentions) == RES_DEPTH
    assert {(a.heads, a.head_dim) for a in attentions} == {(RES_HEADS, RESAMPLER_HEAD_DIM)}
    assert sd["layers.0.0.to_q.weight"].shape[0] // RESAMPLER_HEAD_DIM == RES_HEADS


def test_a_wrong_head_count_gives_a_different_result() -> None:
    """Guards the reference itself: one 128-dim head instead of two 64-dim heads changes the output."""
    sd = _weights(_RESAMPLER_SHAPES)
    hidden = _rand(BATCH, CLIP_SEQ, EMBED, seed=1)
    out = _build(Resampler, sd)(hidden)
    assert _max_diff(out, ref_resampler(sd, hidden, heads=1, depth=RES_DEPTH)) > MIN_EFFECT


def test_faceid_proj_model() -> None:
    sd = _weights(faceid_shapes(CROSS, TOKENS, FACE_ID_DIM))
    face_id = _rand(BATCH, FACE_ID_DIM, seed=1)
    out = _build(FaceIDProjModel, sd)(face_id)
    assert out.shape == (BATCH, TOKENS, CROSS)
    assert _max_diff(out, ref_faceid(sd, face_id, TOKENS, CROSS)) <= TOLERANCE


def test_portrait_gives_tokens_per_face_in_face_order() -> None:
    sd = _weights(faceid_shapes(CROSS, PORTRAIT_TOKENS, FACE_ID_DIM))
    faces = _rand(BATCH, FACES, FACE_ID_DIM, seed=1)
    module = _build(FaceIDProjModel, sd)
    out = module(faces)
    assert out.shape == (BATCH, FACES * PORTRAIT_TOKENS, CROSS)
    assert _max_diff(out, ref_faceid(sd, faces, PORTRAIT_TOKENS, CROSS)) <= TOLERANCE
    for face in range(FACES):
        block = out[:, face * PORTRAIT_TOKENS : (face + 1) * PORTRAIT_TOKENS]
        assert _max_diff(block, module(faces[:, face])) <= TOLERANCE


_PLUS_SHAPES = faceid_plus_shapes(PLUS_CROSS, EMBED, TOKENS, FACE_ID_DIM)
#: faceid_plus_shapes builds the official perceiver depth.
_PLUS_DEPTH = 4
S_SCALE = 1.5


@pytest.mark.parametrize(("shortcut", "s_scale"), [(False, 1.0), (True, 1.0), (True, 2.0)])
def test_proj_plus_model(shortcut: bool, s_scale: float) -> None:
    sd = _weights(_PLUS_SHAPES)
    face_id, hidden = _rand(BATCH, FACE_ID_DIM, seed=1), _rand(BATCH, CLIP_SEQ, EMBED, seed=2)
    out = _build(ProjPlusModel, sd)(face_id, hidden, shortcut=shortcut, s_scale=s_scale)
    assert out.shape == (BATCH, TOKENS, PLUS_CROSS)
    expected = ref_proj_plus(sd, face_id, hidden, TOKENS, PLUS_CROSS, _PLUS_DEPTH, shortcut, s_scale)
    assert _max_diff(out, expected) <= TOLERANCE


def test_proj_plus_shortcut_matters() -> None:
    sd = _weights(_PLUS_SHAPES)
    face_id, hidden = _rand(BATCH, FACE_ID_DIM, seed=1), _rand(BATCH, CLIP_SEQ, EMBED, seed=2)
    module = _build(ProjPlusModel, sd)
    assert _max_diff(module(face_id, hidden, shortcut=True), module(face_id, hidden, shortcut=False)) > MIN_EFFECT


# --- through IPAdapter.project --------------------------------------------------------------------------------------


def _small_adapter(name: str, image_proj: dict, cross: int,
                   dtype: torch.dtype = torch.float64) -> tuple[IPAdapter, dict[str, torch.Tensor]]:
    """A 16-layer adapter with the given projection; float64 unless asked, to compare formulas exactly."""
    groups = random_groups(image_proj, [LAYER_WIDTH] * SD15_LAYERS, cross)
    adapter = IPAdapter.from_groups(CheckpointGroups(name, groups["image_proj"], groups["ip_adapter"]), dtype=dtype)
    return adapter, groups["image_proj"]


def test_adapter_project_plusv2_applies_the_shortcut_from_the_name() -> None:
    adapter, sd = _small_adapter("ip-adapter-faceid-plusv2_sd15.bin", _PLUS_SHAPES, PLUS_CROSS)
    face_id, hidden = _rand(BATCH, FACE_ID_DIM, seed=1), _rand(BATCH, CLIP_SEQ, EMBED, seed=2)
    out = adapter.project(hidden, face_id, s_scale=S_SCALE)
    expected = ref_proj_plus(sd, face_id, hidden, TOKENS, PLUS_CROSS, _PLUS_DEPTH, True, S_SCALE)
    assert _max_diff(out, expected) <= TOLERANCE


def test_adapter_project_portrait_several_faces() -> None:
    adapter, sd = _small_adapter("ip-adapter-faceid-portrait-v11_sd15.bin",
                                 faceid_shapes(CROSS, PORTRAIT_TOKENS, FACE_ID_DIM), CROSS)
    faces = _rand(BATCH, FACES, FACE_ID_DIM, seed=1)
    out = adapter.project(face_id=faces)
    assert out.shape == (BATCH, FACES * PORTRAIT_TOKENS, CROSS)
    assert _max_diff(out, ref_faceid(sd, faces, PORTRAIT_TOKENS, CROSS)) <= TOLERANCE


def test_adapter_project_casts_input_to_its_dtype() -> None:
    adapter, sd = _small_adapter("ip-adapter_sd15.safetensors", image_proj_shapes(CROSS, EMBED, TOKENS), CROSS,
                                 dtype=torch.float32)
    embeds = _rand(BATCH, EMBED, seed=1)
    out = adapter.project(embeds)
    assert out.dtype == torch.float32
    assert _max_diff(out, ref_image_proj(sd, embeds, TOKENS, CROSS)) <= TOLERANCE


def _official(stem: str) -> IPAdapter:
    ck = next(c for c in OFFICIAL if c.stem == stem)
    shapes = ck.shapes()
    groups = CheckpointGroups(f"{stem}.safetensors", materialize(shapes["image_proj"]),
                              materialize(shapes["ip_adapter"]))
    return IPAdapter.from_groups(groups, device="meta")


@pytest.mark.parametrize(
    ("stem", "clip", "says"),
    [
        ("ip-adapter_sd15", torch.empty(BATCH, VIT_BIGG_EMBEDS, device="meta"),
         ("ViT-H/14", "ViT-bigG/14", "1024", "1280")),
        ("ip-adapter_sdxl", torch.empty(BATCH, VIT_H_EMBEDS, device="meta"), ("ViT-bigG/14", "ViT-H/14")),
        ("ip-adapter-plus_sd15", torch.empty(BATCH, CLIP_TOKENS, VIT_BIGG_HIDDEN, device="meta"),
         ("ViT-H/14", "ViT-bigG/14", "1280", "1664")),
    ],
    ids=["bigG-embeds-to-sd15", "vitH-embeds-to-sdxl", "bigG-hidden-to-plus"],
)
def test_wrong_encoder_width_is_reported(stem: str, clip: torch.Tensor, says: tuple[str, ...]) -> None:
    with pytest.raises(IncompatibleEncodingError) as info:
        _official(stem).project(clip)
    message = str(info.value)
    assert f"{stem}.safetensors" in message
    for fragment in says:
        assert fragment in message


def test_plus_adapter_without_hidden_states_is_reported() -> None:
    with pytest.raises(IncompatibleEncodingError) as info:
        _official("ip-adapter-plus_sd15").project(None)
    assert "ip-adapter-plus_sd15.safetensors" in str(info.value)
    assert "penultimate_hidden_states" in str(info.value)


def test_faceid_adapter_without_face_embedding_is_reported() -> None:
    with pytest.raises(IncompatibleEncodingError, match="ip-adapter-faceid_sd15.safetensors"):
        _official("ip-adapter-faceid_sd15").project(face_id=None)
