"""FaceID from face photos to noise predictions: Encode Face Prompt (stand-in InsightFace pack) -> Load IP-Adapter
-> Apply IP-Adapter FaceID in the host, against the official pipeline (InsightFace called directly, `faces[0]`,
`norm_crop(224)`, the CLIP twin) feeding diffusers' IP-Adapter on the UNet twin, with the checkpoint's LoRA fused into
the twin by the official math. Cond and uncond rows in one batch, <= 1e-4 in float32."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tests.faceid_standins import Face, face_photo, require_faceid
from tests.host.faceid_setup import (
    FaceNodes,
    apply_faceid,
    diffusers_reference,
    encode_faces,
    faceid_groups,
    official_faces,
    standin_pack,
    twin_crop_hidden,
    write_faceid_adapter,
)
from tests.host.ipa_setup import SIGMA, latent, text_conds, twin_batch_eps
from tests.host.predict import host_eps

require_faceid()

pytestmark = pytest.mark.filterwarnings("ignore:.*estimate.*:FutureWarning")

TOLERANCE = 1e-4
MIN_EFFECT = 1e-2
WEIGHT = 0.8


@dataclass(frozen=True)
class Case:
    family: str
    kind: str
    faces: int
    lora: float
    s_scale: float = 1.0

    @property
    def id(self) -> str:
        return f"{self.family}-{self.kind}-{self.faces}face"


#: SD1.5: each kind with its LoRA where it has one; SDXL: the unnorm portrait (raw embeddings, a resampler, several
#: faces). The SDXL LoRA (560 modules) is checked against the host's loader in test_faceid_lora.py.
CASES = [
    Case("sd15", "faceid", 1, lora=0.7),
    Case("sd15", "faceid-plusv2", 1, lora=0.6, s_scale=1.7),
    Case("sd15", "faceid-portrait", 3, lora=0.0),
    Case("sdxl", "faceid-portrait-unnorm", 2, lora=0.0),
]


@pytest.fixture(scope="module")
def nodes(host_pack) -> FaceNodes:
    return FaceNodes.of(host_pack)


@pytest.fixture(scope="module")
def analysis(nodes, host_models):
    return nodes.load_insightface.load(standin_pack(host_models), "CPU")[0]


@pytest.fixture(scope="module")
def family(tiny_sd15, tiny_sdxl):
    """Per family: the tiny UNet and its unpatched host prediction (computed once)."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            unet = tiny_sd15 if name == "sd15" else tiny_sdxl
            cond, uncond = text_conds(unet)
            cache[name] = (unet, host_eps(unet.patcher, latent(), SIGMA, cond, uncond))
        return cache[name]

    return get


def _photos(count: int) -> torch.Tensor:
    return torch.cat([face_photo(Face(4 + 3 * i, 6 + i, person=10 + i)) for i in range(count)])


def _reference_embeds(case: Case, host_models, images, clip, twin) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """diffusers' image_embeds (and, for Plus, the projection's clip_embeds) from the official pipeline."""
    official = official_faces(host_models.folder("insightface"), standin_pack(host_models), images,
                              normed=case.kind != "faceid-portrait-unnorm")
    positive = official.ids[None]  # (1, n, 512): n face images of one sample
    if case.kind == "faceid-portrait-unnorm":
        positive = positive[:, :, None]  # the resampler reads a length-1 sequence per face
    if case.kind == "faceid-plusv2":
        hidden, zero_pixels = twin_crop_hidden(clip, official.crops)
        layer = twin.encoder_hid_proj.image_projection_layers[0]
        layer.clip_embeds = torch.stack([zero_pixels.expand_as(hidden), hidden])  # (2, n, T, H), negative first
        layer.shortcut, layer.shortcut_scale = True, case.s_scale
    return [(positive, torch.zeros_like(positive))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_face_photos_to_noise_prediction_match_the_official_pipeline(case, nodes, analysis, host_models, family,
                                                                     tiny_clip_vision) -> None:
    unet, (plain_cond, _) = family(case.family)
    images = _photos(case.faces)
    clip = tiny_clip_vision.host if case.kind == "faceid-plusv2" else None
    prompt, _ = encode_faces(nodes, analysis, images, clip=clip)
    groups = faceid_groups(case.kind, unet, tiny_clip_vision, seed=len(case.id))
    adapter = nodes.load.load(write_faceid_adapter(host_models, groups, case.kind, case.family, tag="parity"))[0]
    assert adapter.adapter.spec.kind == case.kind
    model = apply_faceid(nodes, unet.patcher, adapter, prompt, WEIGHT, case.s_scale, case.lora)
    modules = len(adapter.adapter.lora) // 2  # one (down, up) pair per module
    assert len(model.patches) == (modules if case.lora else 0)
    cond, uncond = text_conds(unet)
    x = latent()
    ours_cond, ours_uncond = host_eps(model, x, SIGMA, cond, uncond)
    with diffusers_reference(unet, groups, WEIGHT, case.lora) as twin:
        embeds = _reference_embeds(case, host_models, images, tiny_clip_vision, twin)
        ref_cond, ref_uncond = twin_batch_eps(twin, unet, x, cond, uncond, embeds)
    assert (ours_cond - ref_cond).abs().max() <= TOLERANCE
    assert (ours_uncond - ref_uncond).abs().max() <= TOLERANCE
    assert (ours_cond - plain_cond).abs().max() > MIN_EFFECT
