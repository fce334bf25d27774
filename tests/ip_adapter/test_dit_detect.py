"""DiT adapters in the core, without a host: reading the released layouts (XLabs' flat safetensors, InstantX's
pickle), detection into frozen specs that name the family, refusals with actionable messages, and the UNet detection
left as it was."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from ip_adapter import CheckpointFormatError, load_ip_adapter, read_checkpoint
from ip_adapter.detect import detect
from ip_adapter.layout import BaseFamily
from ip_adapter.spec import ClipOutput, ProjectionType
from tests.dit_factories import (
    RELEASED,
    instantx_shapes,
    random_groups,
    random_tensors,
    xlabs_shapes,
)

TINY_XLABS = dict(blocks=2, hidden=32, token_width=64, clip_width=16, tokens=4)
TINY_INSTANTX = dict(blocks=2, hidden=128, head_dim=64, clip_width=32, tokens=8, dim=128, heads=2, temb_in=32)


def _groups(released):
    if "image_proj" in released.shapes:
        return random_groups(released.shapes, device="meta")
    from ip_adapter.checkpoint import group_keys

    groups = group_keys(random_tensors(released.shapes, device="meta"), released.filename)
    return {"image_proj": groups.image_proj, "ip_adapter": groups.ip_adapter}


@pytest.mark.parametrize("released", RELEASED, ids=lambda r: r.kind)
def test_released_files_are_detected_with_their_family(released) -> None:
    groups = _groups(released)
    spec = detect(groups["image_proj"], groups["ip_adapter"], released.filename)
    assert (spec.kind, spec.family.value, spec.encoder, spec.num_tokens, spec.num_layers) == (
        released.kind, released.family, released.encoder, released.num_tokens, released.num_blocks)
    assert spec.is_dit and not spec.is_faceid
    assert released.family in spec.describe() and f"{released.num_blocks} blocks" in spec.describe()
    params = sum(math.prod(s) for table in (released.shapes.values() if "image_proj" in released.shapes
                                            else [released.shapes]) for s in table.values())
    assert params == released.total_params


def test_xlabs_file_reads_into_diffusers_names(tmp_path) -> None:
    shapes = xlabs_shapes(**TINY_XLABS)
    save_file(random_tensors(shapes), str(tmp_path / "ip_adapter.safetensors"))
    groups = read_checkpoint(tmp_path / "ip_adapter.safetensors")
    assert set(groups.image_proj) == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    names = {f"{i}.to_{kv}_ip.{part}" for i in range(2) for kv in "kv" for part in ("weight", "bias")}
    assert set(groups.ip_adapter) == names
    adapter = load_ip_adapter(tmp_path / "ip_adapter.safetensors")
    assert adapter.spec.family is BaseFamily.FLUX and adapter.spec.projection is ProjectionType.IMAGE_PROJ
    tokens = torch.randn(1, 4, TINY_XLABS["token_width"])
    k, _ = adapter.project_kv(0, tokens)
    weight = groups.ip_adapter["0.to_k_ip.weight"]
    torch.testing.assert_close(k, tokens @ weight.T + groups.ip_adapter["0.to_k_ip.bias"])  # the bias is used


def test_instantx_pickle_loads_with_weights_only(tmp_path) -> None:
    torch.save(random_groups(instantx_shapes(**TINY_INSTANTX)), tmp_path / "ip-adapter.bin")
    adapter = load_ip_adapter(tmp_path / "ip-adapter.bin")
    spec = adapter.spec
    assert (spec.family, spec.kind, spec.projection, spec.clip_output) == (
        BaseFamily.SD35_LARGE, "instantx", ProjectionType.TIME_RESAMPLER, ClipOutput.HIDDEN_STATES)
    assert (spec.num_tokens, spec.num_layers, spec.cross_attention_dim, spec.clip_width) == (8, 2, 128, 32)


def _xlabs_flat(**changes) -> dict[str, torch.Tensor]:
    flat = random_tensors(xlabs_shapes(**TINY_XLABS))
    for key, value in changes.items():
        if value is None:
            flat.pop(key)
        else:
            flat[key] = value
    return flat


@pytest.mark.parametrize(("changes", "words"), [
    ({"double_blocks.1.processor.extra.weight": torch.zeros(1)}, "unexpected key"),
    ({"double_blocks.1.processor.ip_adapter_double_stream_v_proj.bias": None}, "block 1 lacks"),
    ({"double_blocks.1.processor.ip_adapter_double_stream_k_proj.weight": torch.zeros(32, 65)}, "disagree"),
    ({"ip_adapter_proj_model.norm.weight": torch.zeros(48)}, "tokens of width"),
], ids=["extra key", "missing bias", "shape", "token width"])
def test_broken_xlabs_files_name_the_problem(tmp_path, changes, words) -> None:
    save_file(_xlabs_flat(**changes), str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointFormatError, match=words) as error:
        load_ip_adapter(tmp_path / "broken.safetensors")
    assert "broken.safetensors" in str(error.value)


def test_instantx_flux_adapter_is_refused_with_the_reason(tmp_path) -> None:
    groups = {"image_proj": random_tensors({"proj.0.weight": (8, 4), "proj.0.bias": (8,), "proj.2.weight": (16, 8),
                                            "proj.2.bias": (16,), "norm.weight": (8,), "norm.bias": (8,)}),
              "ip_adapter": random_tensors({f"{i}.to_{kv}_ip.weight": (8, 8) for i in range(3) for kv in "kv"})}
    torch.save(groups, tmp_path / "ip-adapter.bin")
    with pytest.raises(CheckpointFormatError, match="InstantX's FLUX.1-dev IP-Adapter") as error:
        load_ip_adapter(tmp_path / "ip-adapter.bin")
    assert "XLabs" in str(error.value)


def test_a_flux_model_file_in_the_ipadapter_folder_is_named(tmp_path) -> None:
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)}, str(tmp_path / "flux1-dev.safetensors"))
    with pytest.raises(CheckpointFormatError, match="FLUX or SD3 diffusion model"):
        load_ip_adapter(tmp_path / "flux1-dev.safetensors")


def test_faceid_lora_at_index_zero_still_reads_as_a_unet_adapter() -> None:
    """FaceID files carry LoRA keys at even indices, 0 included; the DiT signatures must not claim them."""
    from ip_adapter.dit.detect import detect_dit

    ip = random_tensors({"0.to_q_lora.down.weight": (4, 8), "1.to_k_ip.weight": (8, 8)})
    assert detect_dit({}, ip, "ip-adapter-faceid_sd15.bin") is None


def _dit_files() -> list:
    from pathlib import Path

    return sorted((Path(__file__).resolve().parents[2] / "ip_adapter" / "dit").glob("*.py"))


@pytest.mark.parametrize("path", _dit_files(), ids=lambda p: p.name)
def test_dit_core_module_has_no_host_import(path) -> None:
    """The DiT core is pure torch too: no host module, and relative imports stay inside `ip_adapter` (level 2)."""
    import ast

    from tests.ip_adapter.test_imports import HOST_MODULES

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & HOST_MODULES
        elif isinstance(node, ast.ImportFrom):
            assert node.level <= 2 and (node.level or (node.module or "").split(".")[0] not in HOST_MODULES)
