"""Every image-projection family equals diffusers' conversion of the same official-format `image_proj` group.

Both sides run in float64 on the same float32-drawn weights, so the bound measures the formulas, not the float32
rounding of one CPU's BLAS kernels."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from ip_adapter.adapter import IPAdapter  # noqa: E402
from ip_adapter.checkpoint import CheckpointGroups  # noqa: E402
from tests.diffusers_reference import SD15_CONFIG, tiny_unet  # noqa: E402
from tests.factories import (  # noqa: E402
    Shapes,
    faceid_plus_shapes,
    faceid_shapes,
    image_proj_shapes,
    mlp_shapes,
    random_groups,
    resampler_shapes,
)

TOLERANCE = 1e-5
#: Outputs must differ by more than this when an input that matters changes (so a parity test can fail).
MIN_EFFECT = 1e-2
CROSS = 64
CLIP_EMBED = 48
CLIP_HIDDEN = 80
CLIP_TOKENS = 6
FACE_ID = 512
BATCH = 2
#: diffusers' ImageProjection hard-codes 4 tokens and the FaceID Plus projection 4 ID tokens.
DIFFUSERS_TOKENS = 4
PORTRAIT_TOKENS = 16
PORTRAIT_FACES = 3
#: The FaceID Plus perceiver runs at the cross dim with 64-dim heads: a multiple of 64 is needed.
FACEID_PLUS_CROSS = 128
NUM_LAYERS = 16
LAYER_WIDTH = 32


@pytest.fixture(scope="module")
def converter() -> torch.nn.Module:
    """Any UNet2DConditionModel instance exposes diffusers' `image_proj` conversion."""
    return tiny_unet(SD15_CONFIG)


def _adapter(image_proj: Shapes, cross: int, name: str, seed: int = 0) -> tuple[IPAdapter, dict[str, torch.Tensor]]:
    groups = random_groups(image_proj, [LAYER_WIDTH] * NUM_LAYERS, cross, seed=seed)
    adapter = IPAdapter.from_groups(CheckpointGroups(name, groups["image_proj"], groups["ip_adapter"]),
                                    dtype=torch.float64)
    return adapter, groups["image_proj"]


def _diffusers_projection(converter: torch.nn.Module, image_proj: dict[str, torch.Tensor]) -> torch.nn.Module:
    return converter._convert_ip_adapter_image_proj_to_diffusers(image_proj, low_cpu_mem_usage=False).double().eval()


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).double()


def _assert_parity(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize(
    "shapes, clip_shape, name",
    [
        (image_proj_shapes(CROSS, CLIP_EMBED, DIFFUSERS_TOKENS), (BATCH, CLIP_EMBED), "ip-adapter_sd15.bin"),
        (resampler_shapes(128, 2, 16, CLIP_HIDDEN, CROSS), (BATCH, CLIP_TOKENS, CLIP_HIDDEN), "ip-adapter-plus.bin"),
        (resampler_shapes(64, 3, 8, CLIP_HIDDEN, CROSS), (BATCH, CLIP_TOKENS, CLIP_HIDDEN), "ip-adapter-plus.bin"),
        (mlp_shapes(CROSS, CLIP_HIDDEN), (BATCH, CLIP_TOKENS, CLIP_HIDDEN), "ip-adapter-full-face_sd15.bin"),
    ],
    ids=["base", "plus-dim128-heads2", "plus-dim64-heads3", "full-face"],
)
def test_clip_projection_matches_diffusers(
    converter: torch.nn.Module, shapes: Shapes, clip_shape: tuple[int, ...], name: str
) -> None:
    adapter, image_proj = _adapter(shapes, CROSS, name)
    clip = _randn(*clip_shape)
    with torch.no_grad():
        reference = _diffusers_projection(converter, image_proj)(clip)
        ours = adapter.project(clip=clip)
        other = adapter.project(clip=_randn(*clip_shape, seed=2))
    _assert_parity(ours, reference)
    assert (ours - other).abs().max().item() > MIN_EFFECT


@pytest.mark.parametrize("tokens, faces", [(DIFFUSERS_TOKENS, 1), (PORTRAIT_TOKENS, PORTRAIT_FACES)],
                         ids=["faceid", "portrait"])
def test_faceid_projection_matches_diffusers(converter: torch.nn.Module, tokens: int, faces: int) -> None:
    """Several faces per sample (portrait): diffusers projects each face; ours concatenates their tokens."""
    adapter, image_proj = _adapter(faceid_shapes(CROSS, tokens), CROSS, "ip-adapter-faceid_tiny.bin")
    face_id = _randn(BATCH, faces, FACE_ID)
    with torch.no_grad():
        per_face = _diffusers_projection(converter, image_proj)
        reference = per_face(face_id.reshape(BATCH * faces, FACE_ID)).reshape(BATCH, faces * tokens, CROSS)
        ours = adapter.project(face_id=face_id)
        single = adapter.project(face_id=face_id[:, 0])
    _assert_parity(ours, reference)
    _assert_parity(single, reference[:, :tokens])


@pytest.mark.parametrize(
    "name, shortcut, s_scale",
    [("ip-adapter-faceid-plus_sd15.bin", False, 1.0), ("ip-adapter-faceid-plusv2_sd15.bin", True, 1.0),
     ("ip-adapter-faceid-plusv2_sd15.bin", True, 2.5)],
    ids=["plus", "plusv2", "plusv2-scale2.5"],
)
def test_faceid_plus_projection_matches_diffusers(
    converter: torch.nn.Module, name: str, shortcut: bool, s_scale: float
) -> None:
    shapes = faceid_plus_shapes(FACEID_PLUS_CROSS, CLIP_HIDDEN)
    adapter, image_proj = _adapter(shapes, FACEID_PLUS_CROSS, name)
    assert adapter.spec.shortcut is shortcut
    face_id, clip = _randn(BATCH, FACE_ID), _randn(BATCH, CLIP_TOKENS, CLIP_HIDDEN, seed=2)
    reference_proj = _diffusers_projection(converter, image_proj)
    # diffusers reads the CLIP hidden states and the shortcut from attributes, (B, n_images, T, E) per image.
    reference_proj.clip_embeds = clip[:, None]
    reference_proj.shortcut, reference_proj.shortcut_scale = shortcut, s_scale
    with torch.no_grad():
        reference = reference_proj(face_id)
        ours = adapter.project(clip=clip, face_id=face_id, s_scale=s_scale)
        other_clip = adapter.project(clip=_randn(BATCH, CLIP_TOKENS, CLIP_HIDDEN, seed=3), face_id=face_id,
                                     s_scale=s_scale)
    _assert_parity(ours, reference)
    assert (ours - other_clip).abs().max().item() > MIN_EFFECT
