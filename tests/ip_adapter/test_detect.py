"""Detection of every official checkpoint from its key -> shape table (meta device, full size), compared with a
frozen `AdapterSpec` and the published parameter counts; file-name rules for the layout-identical variants."""

from __future__ import annotations

import pytest
import torch

from ip_adapter import IPAdapter
from ip_adapter.checkpoint import CheckpointGroups
from ip_adapter.layout import BaseFamily
from ip_adapter.spec import AdapterSpec, ClipOutput, ProjectionType
from tests.factories import (
    LORA_RANK,
    OFFICIAL,
    OfficialCheckpoint,
    faceid_plus_shapes,
    image_proj_shapes,
    materialize,
    resampler_shapes,
)

SD15, SDXL = BaseFamily.SD15, BaseFamily.SDXL
EMBEDS, HIDDEN = ClipOutput.IMAGE_EMBEDS, ClipOutput.HIDDEN_STATES
P = ProjectionType
LAYERS = {SD15: 16, SDXL: 70}
CROSS = {SD15: 768, SDXL: 2048}
VIT_H_EMBEDS, VIT_BIGG_EMBEDS, VIT_H_HIDDEN = 1024, 1280, 1280
FACE_ID_DIM = 512
CLIP_TOKENS = 257
BATCH = 2
PORTRAIT_FACES = 3


def _spec(kind: str, family: BaseFamily, projection: ProjectionType, clip_output: ClipOutput | None,
          clip_width: int, tokens: int, face_id_dim: int = 0, lora_rank: int = 0,
          shortcut: bool = False) -> AdapterSpec:
    return AdapterSpec(kind=kind, family=family, projection=projection, clip_output=clip_output,
                       clip_width=clip_width, face_id_dim=face_id_dim, num_tokens=tokens,
                       num_layers=LAYERS[family], cross_attention_dim=CROSS[family], lora_rank=lora_rank,
                       shortcut=shortcut)


# checkpoints.md §4 and §6.2, one spec per official file.
EXPECTED: dict[str, AdapterSpec] = {
    "ip-adapter_sd15": _spec("base", SD15, P.IMAGE_PROJ, EMBEDS, VIT_H_EMBEDS, 4),
    "ip-adapter_sd15_light_v11": _spec("light", SD15, P.IMAGE_PROJ, EMBEDS, VIT_H_EMBEDS, 4),
    "ip-adapter_sd15_vit-G": _spec("vit-g", SD15, P.IMAGE_PROJ, EMBEDS, VIT_BIGG_EMBEDS, 4),
    "ip-adapter-plus_sd15": _spec("plus", SD15, P.RESAMPLER, HIDDEN, VIT_H_HIDDEN, 16),
    "ip-adapter-plus-face_sd15": _spec("plus-face", SD15, P.RESAMPLER, HIDDEN, VIT_H_HIDDEN, 16),
    "ip-adapter-full-face_sd15": _spec("full-face", SD15, P.MLP, HIDDEN, VIT_H_HIDDEN, CLIP_TOKENS),
    "ip-adapter_sdxl": _spec("base", SDXL, P.IMAGE_PROJ, EMBEDS, VIT_BIGG_EMBEDS, 4),
    "ip-adapter_sdxl_vit-h": _spec("base", SDXL, P.IMAGE_PROJ, EMBEDS, VIT_H_EMBEDS, 4),
    "ip-adapter-plus_sdxl_vit-h": _spec("plus", SDXL, P.RESAMPLER, HIDDEN, VIT_H_HIDDEN, 16),
    "ip-adapter-plus-face_sdxl_vit-h": _spec("plus-face", SDXL, P.RESAMPLER, HIDDEN, VIT_H_HIDDEN, 16),
    "ip-adapter-faceid_sd15": _spec("faceid", SD15, P.FACEID_MLP, None, 0, 4, FACE_ID_DIM, LORA_RANK),
    "ip-adapter-faceid_sdxl": _spec("faceid", SDXL, P.FACEID_MLP, None, 0, 4, FACE_ID_DIM, LORA_RANK),
    "ip-adapter-faceid-plus_sd15": _spec("faceid-plus", SD15, P.FACEID_PLUS, HIDDEN, VIT_H_HIDDEN, 4, FACE_ID_DIM,
                                         LORA_RANK),
    "ip-adapter-faceid-plusv2_sd15": _spec("faceid-plusv2", SD15, P.FACEID_PLUS, HIDDEN, VIT_H_HIDDEN, 4,
                                           FACE_ID_DIM, LORA_RANK, shortcut=True),
    "ip-adapter-faceid-plusv2_sdxl": _spec("faceid-plusv2", SDXL, P.FACEID_PLUS, HIDDEN, VIT_H_HIDDEN, 4,
                                           FACE_ID_DIM, LORA_RANK, shortcut=True),
    "ip-adapter-faceid-portrait-v11_sd15": _spec("faceid-portrait", SD15, P.FACEID_MLP, None, 0, 16, FACE_ID_DIM),
    "ip-adapter-faceid-portrait_sdxl": _spec("faceid-portrait", SDXL, P.FACEID_MLP, None, 0, 16, FACE_ID_DIM),
    "ip-adapter-faceid-portrait_sdxl_unnorm": _spec("faceid-portrait-unnorm", SDXL, P.RESAMPLER, None, 0, 16,
                                                    FACE_ID_DIM),
}


def _groups(name: str, image_proj: dict, ip_adapter: dict) -> CheckpointGroups:
    return CheckpointGroups(name, materialize(image_proj), materialize(ip_adapter))


def _official_adapter(ck: OfficialCheckpoint, suffix: str = ".safetensors") -> IPAdapter:
    shapes = ck.shapes()
    return IPAdapter.from_groups(_groups(ck.stem + suffix, shapes["image_proj"], shapes["ip_adapter"]),
                                 device="meta")


@pytest.fixture(scope="module", params=OFFICIAL, ids=lambda ck: ck.stem)
def official(request: pytest.FixtureRequest) -> tuple[OfficialCheckpoint, IPAdapter]:
    return request.param, _official_adapter(request.param)


def test_every_official_checkpoint_has_an_expected_spec() -> None:
    assert set(EXPECTED) == {ck.stem for ck in OFFICIAL}


def test_spec_equals_expected(official: tuple[OfficialCheckpoint, IPAdapter]) -> None:
    ck, adapter = official
    assert adapter.spec == EXPECTED[ck.stem]


def test_spec_agrees_with_published_facts(official: tuple[OfficialCheckpoint, IPAdapter]) -> None:
    ck, adapter = official
    spec = adapter.spec
    assert (spec.kind, spec.encoder, spec.num_tokens) == (ck.kind, ck.encoder, ck.num_tokens)
    assert (spec.family, spec.num_layers, spec.cross_attention_dim) == (
        ck.layout.family, ck.layout.num_layers, ck.layout.cross_attention_dim)
    assert spec.lora_rank == (LORA_RANK if ck.lora else 0)


def test_total_parameter_count_is_published(official: tuple[OfficialCheckpoint, IPAdapter]) -> None:
    ck, adapter = official
    lora = sum(t.numel() for t in adapter.lora.values())
    assert sum(p.numel() for p in adapter.parameters()) + lora == ck.total_params
    assert (lora > 0) == ck.lora


def test_faceid_lora_is_kept_as_file_tensors(official: tuple[OfficialCheckpoint, IPAdapter]) -> None:
    ck, adapter = official
    if not ck.lora:
        assert adapter.lora == {}
        return
    indices = {int(k.split(".")[0]) for k in adapter.lora}
    assert indices == set(range(2 * ck.layout.num_layers))  # attn1 (even) and attn2 (odd) processors
    assert all(not isinstance(t, torch.nn.Parameter) for t in adapter.lora.values())


def test_layers_follow_the_layout(official: tuple[OfficialCheckpoint, IPAdapter]) -> None:
    ck, adapter = official
    layout = ck.layout
    assert adapter.layers.ip_indices == [layer.checkpoint_index for layer in layout.layers]
    assert [adapter.layers.width(layer.checkpoint_index) for layer in layout.layers] == [
        layer.width for layer in layout.layers]


def _clip_input(spec: AdapterSpec) -> torch.Tensor | None:
    if spec.clip_output is EMBEDS:
        return torch.empty(BATCH, spec.clip_width, device="meta")
    if spec.clip_output is HIDDEN:
        return torch.empty(BATCH, CLIP_TOKENS, spec.clip_width, device="meta")
    return None


def _face_input(spec: AdapterSpec) -> tuple[torch.Tensor | None, int]:
    """A face-ID input and the number of faces per sample it carries."""
    if not spec.is_faceid:
        return None, 1
    if spec.kind == "faceid-portrait":
        return torch.empty(BATCH, PORTRAIT_FACES, spec.face_id_dim, device="meta"), PORTRAIT_FACES
    return torch.empty(BATCH, spec.face_id_dim, device="meta"), 1


def test_projection_and_kv_shapes_at_full_size(official: tuple[OfficialCheckpoint, IPAdapter]) -> None:
    ck, adapter = official
    spec = adapter.spec
    face_id, faces = _face_input(spec)
    tokens = adapter.project(_clip_input(spec), face_id)
    assert tuple(tokens.shape) == (BATCH, faces * ck.num_tokens, spec.cross_attention_dim)
    last = ck.layout.layers[-1]
    k, v = adapter.project_kv(last.checkpoint_index, tokens)
    assert tuple(k.shape) == tuple(v.shape) == (BATCH, faces * ck.num_tokens, last.width)


def test_bin_and_safetensors_names_detect_alike() -> None:
    ck = OFFICIAL[0]
    assert _official_adapter(ck, ".bin").spec == _official_adapter(ck, ".safetensors").spec


# Layout-identical variants: only the file name tells them apart (checkpoints.md §5.2).
_SD15_BASE = image_proj_shapes(CROSS[SD15], VIT_H_EMBEDS, 4)
_SD15_PLUS = resampler_shapes(CROSS[SD15], 12, 16, VIT_H_HIDDEN, CROSS[SD15])
_SDXL_PLUS = resampler_shapes(1280, 20, 16, VIT_H_HIDDEN, CROSS[SDXL])
_SDXL_UNNORM = resampler_shapes(1280, 20, 16, FACE_ID_DIM, CROSS[SDXL])
_SD15_FACEID_PLUS = faceid_plus_shapes(CROSS[SD15], VIT_H_HIDDEN)


def _detect(name: str, image_proj: dict, family: BaseFamily) -> AdapterSpec:
    layout_ck = next(ck for ck in OFFICIAL if ck.layout.family is family and not ck.lora)
    return _official_spec(name, image_proj, layout_ck.shapes()["ip_adapter"])


def _official_spec(name: str, image_proj: dict, ip_adapter: dict) -> AdapterSpec:
    return IPAdapter.from_groups(_groups(name, image_proj, ip_adapter), device="meta").spec


@pytest.mark.parametrize(
    ("name", "image_proj", "family", "kind", "shortcut"),
    [
        ("ip-adapter_sd15.safetensors", _SD15_BASE, SD15, "base", False),
        ("ip-adapter_sd15_light.safetensors", _SD15_BASE, SD15, "light", False),
        ("ip-adapter_sd15_light_v11.bin", _SD15_BASE, SD15, "light", False),
        ("ip-adapter-plus_sd15.safetensors", _SD15_PLUS, SD15, "plus", False),
        ("ip-adapter-plus-face_sd15.safetensors", _SD15_PLUS, SD15, "plus-face", False),
        ("ip_plus_composition_sd15.safetensors", _SD15_PLUS, SD15, "composition", False),
        ("ip-adapter-plus-face_sdxl_vit-h.safetensors", _SDXL_PLUS, SDXL, "plus-face", False),
        ("ip-adapter-faceid-portrait_sdxl_unnorm.bin", _SDXL_UNNORM, SDXL, "faceid-portrait-unnorm", False),
        ("renamed_resampler.bin", _SDXL_UNNORM, SDXL, "faceid-portrait-unnorm", False),
        ("IP-Adapter-FaceID-PlusV2_SD15.BIN", _SD15_FACEID_PLUS, SD15, "faceid-plusv2", True),
        ("ip-adapter-faceid-plus_sd15.bin", _SD15_FACEID_PLUS, SD15, "faceid-plus", False),
    ],
)
def test_file_name_rules(name: str, image_proj: dict, family: BaseFamily, kind: str, shortcut: bool) -> None:
    spec = _detect(name, image_proj, family)
    assert (spec.kind, spec.shortcut) == (kind, shortcut)


def test_unnorm_is_face_id_only() -> None:
    spec = _detect("ip-adapter-faceid-portrait_sdxl_unnorm.bin", _SDXL_UNNORM, SDXL)
    assert (spec.clip_output, spec.face_id_dim, spec.encoder) == (None, FACE_ID_DIM, "none")


@pytest.mark.parametrize(
    ("name", "image_proj", "family", "kind", "shortcut"),
    [
        ("plusv2/ip-adapter-faceid-plus_sd15.bin", _SD15_FACEID_PLUS, SD15, "faceid-plus", False),
        ("light/ip-adapter_sd15.safetensors", _SD15_BASE, SD15, "base", False),
        ("face/ip-adapter-plus_sd15.safetensors", _SD15_PLUS, SD15, "plus", False),
    ],
)
def test_only_the_file_name_counts_not_its_folder(name: str, image_proj: dict, family: BaseFamily, kind: str,
                                                  shortcut: bool) -> None:
    spec = _detect(name, image_proj, family)
    assert (spec.kind, spec.shortcut) == (kind, shortcut)
