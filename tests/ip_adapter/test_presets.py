"""Presets: the (family, preset) -> files table against the node contract, and finding files by name the way the
peer's users need (case, separators, extension preference, hidden files, sub-folders, no substring matches)."""

from __future__ import annotations

import pytest

from ip_adapter import BaseFamily, InvalidOptionError, MissingModelError
from ip_adapter.presets import (
    CLIP_VISION_FILES,
    PRESETS,
    UNAVAILABLE,
    VIT_BIGG,
    VIT_H,
    find_file,
    missing_files_error,
    preset_files,
)

SD15, SDXL = BaseFamily.SD15, BaseFamily.SDXL
#: The node contract's official names, in order (node-contract.md "LoadIPAdapterPreset" and "Added for FaceID").
CONTRACT = {
    (SD15, "standard"): ["ip-adapter_sd15"], (SD15, "light"): ["ip-adapter_sd15_light_v11", "ip-adapter_sd15_light"],
    (SD15, "plus"): ["ip-adapter-plus_sd15"], (SD15, "plus face"): ["ip-adapter-plus-face_sd15"],
    (SD15, "full face"): ["ip-adapter-full-face_sd15"], (SD15, "vit-G"): ["ip-adapter_sd15_vit-G"],
    (SD15, "composition"): ["ip_plus_composition_sd15"],
    (SDXL, "standard"): ["ip-adapter_sdxl_vit-h"], (SDXL, "plus"): ["ip-adapter-plus_sdxl_vit-h"],
    (SDXL, "plus face"): ["ip-adapter-plus-face_sdxl_vit-h"], (SDXL, "vit-G"): ["ip-adapter_sdxl"],
    (SDXL, "composition"): ["ip_plus_composition_sdxl"],
    (SD15, "faceid"): ["ip-adapter-faceid_sd15"], (SDXL, "faceid"): ["ip-adapter-faceid_sdxl"],
    (SD15, "faceid plus"): ["ip-adapter-faceid-plus_sd15"],
    (SD15, "faceid plus v2"): ["ip-adapter-faceid-plusv2_sd15"],
    (SDXL, "faceid plus v2"): ["ip-adapter-faceid-plusv2_sdxl"],
    (SD15, "faceid portrait"): ["ip-adapter-faceid-portrait-v11_sd15", "ip-adapter-faceid-portrait_sd15"],
    (SDXL, "faceid portrait"): ["ip-adapter-faceid-portrait_sdxl"],
    (SDXL, "faceid portrait unnorm"): ["ip-adapter-faceid-portrait_sdxl_unnorm"],
}
ENCODER = {"vit-G": VIT_BIGG, "faceid": None, "faceid portrait": None, "faceid portrait unnorm": None}


def test_presets_follow_the_contract() -> None:
    assert PRESETS[:7] == ("standard", "light", "plus", "plus face", "full face", "vit-G", "composition")
    assert PRESETS[7:] == ("faceid", "faceid plus", "faceid plus v2", "faceid portrait", "faceid portrait unnorm")


@pytest.mark.parametrize("key", sorted(CONTRACT, key=str), ids=lambda k: f"{k[0].value}-{k[1]}")
def test_official_names_come_first_in_contract_order(key) -> None:
    files = preset_files(*key)
    names = list(files.adapter.names)
    assert names[: len(CONTRACT[key])] == CONTRACT[key]
    assert files.encoder == ENCODER.get(key[1], VIT_H)
    assert files.clip_vision is (CLIP_VISION_FILES[files.encoder] if files.encoder else None)
    assert files.adapter.url.startswith("https://huggingface.co/") and files.adapter.url.endswith(files.adapter.save_as)


def test_every_family_and_preset_is_covered_once() -> None:
    keys = {(family, preset) for family in (SD15, SDXL) for preset in PRESETS}
    assert set(CONTRACT) | set(UNAVAILABLE) == keys and not set(CONTRACT) & set(UNAVAILABLE)


@pytest.mark.parametrize(("family", "preset", "hint"), [(SDXL, "light", "standard"), (SDXL, "full face", "plus face"),
                                                        (SDXL, "faceid plus", "v2"),
                                                        (SD15, "faceid portrait unnorm", "faceid portrait")])
def test_presets_without_a_file_for_the_family_say_what_to_use(family, preset, hint) -> None:
    with pytest.raises(InvalidOptionError, match=f"no {family.value} version.*{hint}"):
        preset_files(family, preset)


def test_clip_vision_renamings_of_the_contract_are_accepted() -> None:
    assert {"clip_vision_h", "clip-vit-h-14"} <= set(CLIP_VISION_FILES[VIT_H].names)
    assert {"clip_vision_g", "clip-vit-bigg-14"} <= set(CLIP_VISION_FILES[VIT_BIGG].names)
    assert CLIP_VISION_FILES[VIT_H].names[0] == "CLIP-ViT-H-14-laion2B-s32B-b79K"
    assert CLIP_VISION_FILES[VIT_BIGG].names[0] == "CLIP-ViT-bigG-14-laion2B-39B-b160k"


def _find(family, preset, listing):
    return find_file(preset_files(family, preset).adapter, listing)


def test_case_and_separators_do_not_matter() -> None:
    assert _find(SD15, "standard", ["IP_Adapter-SD15.SafeTensors"]) == "IP_Adapter-SD15.SafeTensors"
    assert find_file(CLIP_VISION_FILES[VIT_H], ["clip-vision-H.safetensors"]) == "clip-vision-H.safetensors"


def test_whole_names_only_never_substrings() -> None:
    assert _find(SDXL, "vit-G", ["ip-adapter_sdxl_vit-h.safetensors"]) is None
    assert _find(SD15, "standard", ["ip-adapter_sd15_light.safetensors", "my-ip-adapter_sd15.safetensors"]) is None


def test_safetensors_beats_bin_and_earlier_names_beat_later_ones() -> None:
    assert _find(SD15, "plus", ["ip-adapter-plus_sd15.bin", "ip-adapter-plus_sd15.safetensors"]) \
        == "ip-adapter-plus_sd15.safetensors"
    assert _find(SD15, "light", ["ip-adapter_sd15_light.safetensors", "ip-adapter_sd15_light_v11.bin"]) \
        == "ip-adapter_sd15_light_v11.bin"
    assert _find(SD15, "plus", ["ip-adapter-plus_sd15.ckpt"]) is None


def test_hidden_files_and_folders_are_ignored_subfolders_are_not() -> None:
    hidden = ["._ip-adapter_sd15.safetensors", ".trash/ip-adapter_sd15.safetensors"]
    assert _find(SD15, "standard", hidden) is None
    assert find_file(preset_files(SD15, "standard").adapter, hidden, include_hidden=True) == hidden[0]
    assert _find(SD15, "standard", hidden + ["sd15/ip-adapter_sd15.safetensors"]) == "sd15/ip-adapter_sd15.safetensors"
    assert _find(SD15, "standard", ["sd15\\ip-adapter_sd15.safetensors"]) == "sd15\\ip-adapter_sd15.safetensors"


def test_missing_file_error_names_everything_a_user_needs() -> None:
    files = preset_files(SDXL, "plus face")
    error = missing_files_error("plus face", SDXL, [
        (files.adapter, ["/a/models/ipadapter", "/b/extra"], "._ip-adapter-plus-face_sdxl_vit-h.safetensors"),
        (files.clip_vision, ["/a/models/clip_vision"], None)])
    assert isinstance(error, MissingModelError) and isinstance(error, FileNotFoundError)
    message = str(error)
    for part in ("'plus face'", "SDXL", "ip-adapter-plus-face_sdxl_vit-h.safetensors", "ip-adapter-plus-face_sdxl",
                 "/a/models/ipadapter", "/b/extra", "/a/models/clip_vision", files.adapter.url, files.clip_vision.url,
                 "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "hidden file"):
        assert part in message, part
