"""Load IP-Adapter Preset in the host: the official files (or their common renamings) are found in every registered
folder, hidden files are ignored, the CLIP vision model is the host's own object loaded once, misnamed files and
missing files fail with everything a user needs to fix them."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from tests.factories import faceid_shapes, flat, random_groups
from tests.host.ipa_setup import reference_images

H_FILE, G_FILE = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"


@pytest.fixture
def folders(comfy_host, tmp_path, monkeypatch):
    """Fresh ipadapter and clip_vision folders for one test: a default one and one from extra_model_paths.yaml."""
    import folder_paths

    made = {}
    for name in ("ipadapter", "clip_vision"):
        default, extra = tmp_path / "models" / name, tmp_path / "yaml" / name
        default.mkdir(parents=True)
        extra.mkdir(parents=True)
        exts = folder_paths.folder_names_and_paths[name][1]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(default), str(extra)], set(exts)))
        made[name] = (default, extra)
    folder_paths.filename_list_cache.clear()
    yield made
    folder_paths.filename_list_cache.clear()


def _write(standins, folder: Path, name: str, like: str | None = None) -> Path:
    """The stand-in for `like` (default: `name`) written under `folder/name`."""
    import folder_paths

    stand_in = standins.find(folder.name, like or name)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    stand_in.make(standins, path)
    standins.written[str(path.resolve())] = stand_in
    folder_paths.filename_list_cache.clear()
    return path


def _preset(host_pack, standins, model, preset):
    with standins.active(), torch.inference_mode():
        return host_pack.registered["LoadIPAdapterPreset"]().load(model, preset)


def test_official_files_in_a_yaml_folder_load_with_the_hosts_clip_vision(host_pack, standins, folders, tiny_sd15):
    import comfy.clip_vision

    _write(standins, folders["ipadapter"][1], "ip-adapter-plus_sd15.safetensors")
    clip_path = _write(standins, folders["clip_vision"][1], H_FILE)
    adapter, clip = _preset(host_pack, standins, tiny_sd15.patcher, "plus")
    assert adapter.adapter.spec.kind == "plus" and adapter.adapter.spec.encoder == "ViT-H/14"
    assert type(clip) is comfy.clip_vision.ClipVisionModel
    with standins.active(), torch.inference_mode():
        host_clip = comfy.clip_vision.load(str(clip_path))  # what Load CLIP Vision gives for this file
        image = reference_images(1)
        ours, theirs = clip.encode_image(image), host_clip.encode_image(image)
    assert torch.equal(ours.image_embeds, theirs.image_embeds)
    assert torch.equal(ours.penultimate_hidden_states, theirs.penultimate_hidden_states)


def test_clip_vision_is_loaded_once_for_every_preset_that_needs_it(host_pack, standins, folders, tiny_sd15):
    for name in ("ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.safetensors"):
        _write(standins, folders["ipadapter"][0], name)
    _write(standins, folders["clip_vision"][0], H_FILE)
    before = len(standins.calls.get("comfy.clip_vision.load", []))
    (_, first), (_, second) = (_preset(host_pack, standins, tiny_sd15.patcher, p) for p in ("standard", "plus"))
    assert first is second
    assert len(standins.calls["comfy.clip_vision.load"]) == before + 1


def test_renamed_files_in_subfolders_are_found_and_safetensors_wins(host_pack, standins, folders, tiny_sd15):
    (folders["ipadapter"][0] / "ip-adapter_sd15.bin").write_bytes(b"not opened: .safetensors wins")
    _write(standins, folders["ipadapter"][1], "SD1.5/IP_Adapter-SD15.SafeTensors", like="ip-adapter_sd15.safetensors")
    _write(standins, folders["clip_vision"][0], "clip_vision_h.safetensors", like=H_FILE)
    adapter, clip = _preset(host_pack, standins, tiny_sd15.patcher, "standard")
    assert Path(adapter.path).name == "IP_Adapter-SD15.SafeTensors" and clip is not None


def test_vit_g_pairs_the_bigg_encoder(host_pack, standins, folders, tiny_sd15):
    _write(standins, folders["ipadapter"][0], "ip-adapter_sd15_vit-G.safetensors")
    _write(standins, folders["clip_vision"][0], H_FILE)
    _write(standins, folders["clip_vision"][0], G_FILE)
    adapter, clip = _preset(host_pack, standins, tiny_sd15.patcher, "vit-G")
    assert adapter.adapter.spec.kind == "vit-g" and adapter.adapter.spec.encoder == "ViT-bigG/14"
    with torch.inference_mode():
        assert clip.encode_image(reference_images(1)).image_embeds.shape[-1] == 1280


def test_the_family_comes_from_the_model(host_pack, standins, folders, tiny_sdxl):
    _write(standins, folders["ipadapter"][0], "ip-adapter-plus_sd15.safetensors")  # the SD1.5 file does not count
    core = host_pack.module.ip_adapter
    with pytest.raises(core.MissingModelError, match="(?s)for SDXL.*ip-adapter-plus_sdxl_vit-h.safetensors"):
        _preset(host_pack, standins, tiny_sdxl.patcher, "plus")


def test_missing_files_are_reported_with_names_folders_and_sources(host_pack, standins, folders, tiny_sd15):
    (folders["ipadapter"][0] / "._ip-adapter-plus-face_sd15.safetensors").write_bytes(b"macOS metadata")
    core = host_pack.module.ip_adapter
    with pytest.raises(core.MissingModelError) as caught:
        _preset(host_pack, standins, tiny_sd15.patcher, "plus face")
    message = str(caught.value)
    for part in ("'plus face'", "SD1.5", "ip-adapter-plus-face_sd15.safetensors", H_FILE, "hidden file",
                 *(str(p) for pair in folders.values() for p in pair),
                 "https://huggingface.co/h94/IP-Adapter/resolve/main/models/ip-adapter-plus-face_sd15.safetensors",
                 "https://huggingface.co/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors"):
        assert part in message, part


def test_a_misnamed_file_is_caught(host_pack, standins, folders, tiny_sd15):
    _write(standins, folders["ipadapter"][0], "ip-adapter_sd15.safetensors", like="ip-adapter-plus_sd15.safetensors")
    _write(standins, folders["clip_vision"][0], H_FILE)
    core = host_pack.module.ip_adapter
    with pytest.raises(core.IncompatibleModelError, match="misnamed"):
        _preset(host_pack, standins, tiny_sd15.patcher, "standard")


def test_presets_without_a_file_for_the_family(host_pack, standins, folders, tiny_sdxl):
    core = host_pack.module.ip_adapter
    with pytest.raises(core.InvalidOptionError, match="no SDXL version"):
        _preset(host_pack, standins, tiny_sdxl.patcher, "light")


def test_faceid_presets_without_clip_vision_return_none(host_pack, standins, folders, tiny_sd15):
    from ip_adapter.layout import SD15_LAYOUT
    from tests.diffusers_reference import attn2_widths

    groups = random_groups(faceid_shapes(768, 4), attn2_widths(tiny_sd15.diffusers), 768, seed=1)
    assert len(groups["ip_adapter"]) == 2 * SD15_LAYOUT.num_layers
    from safetensors.torch import save_file

    save_file(flat(groups), str(folders["ipadapter"][0] / "ip-adapter-faceid_sd15.safetensors"))
    adapter, clip = _preset(host_pack, standins, tiny_sd15.patcher, "faceid")
    assert adapter.adapter.spec.kind == "faceid" and clip is None


def test_only_sd15_and_sdxl_models_have_presets(host_pack, standins, folders):
    fake = types.SimpleNamespace(model=types.SimpleNamespace(
        diffusion_model=torch.nn.Identity(), model_config=types.SimpleNamespace(unet_config={"context_dim": 4096})))
    core = host_pack.module.ip_adapter
    with pytest.raises(core.IncompatibleModelError, match="SD1.5 and SDXL"):
        _preset(host_pack, standins, fake, "standard")
