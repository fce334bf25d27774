"""Presets: which adapter file and which CLIP vision file a (base family, preset) needs, and finding them by name.

Names match case-insensitively with `-`, `_`, `.` and spaces ignored ("IP_Adapter-SD15" is "ip-adapter_sd15"),
only as whole file names (never as substrings, so "ip-adapter_sdxl" never picks "ip-adapter_sdxl_vit-h"). Accepted
names are tried in order, official first; for one name `.safetensors` wins over `.bin`. Hidden files and folders
(".name", macOS "._name") are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import InvalidOptionError, MissingModelError
from .layout import BaseFamily

PRESETS = ("standard", "light", "plus", "plus face", "full face", "vit-G", "composition",
           "faceid", "faceid plus", "faceid plus v2", "faceid portrait", "faceid portrait unnorm")
EXTENSIONS = (".safetensors", ".bin")
VIT_H, VIT_BIGG = "ViT-H/14", "ViT-bigG/14"
_H94 = "https://huggingface.co/h94/IP-Adapter/resolve/main/"
_FACEID = "https://huggingface.co/h94/IP-Adapter-FaceID/resolve/main/"
_OSTRIS = "https://huggingface.co/ostris/ip-composition-adapter/resolve/main/"
SD15, SDXL = BaseFamily.SD15, BaseFamily.SDXL


@dataclass(frozen=True)
class WantedFile:
    """A model file a preset needs.

    Attributes:
        role: "IP-Adapter" or "CLIP vision", for messages.
        folder: the ComfyUI model folder it is searched in.
        names: accepted file names without extension, official first, then common renamings.
        url: where the official file is downloaded from.
        save_as: the file name to save the download under.
    """

    role: str
    folder: str
    names: tuple[str, ...]
    url: str
    save_as: str


@dataclass(frozen=True)
class PresetFiles:
    """What one preset loads for one base family.

    Attributes:
        adapter: the IP-Adapter file.
        clip_vision: the CLIP vision file, or None for FaceID kinds that use only the face embedding.
        kinds: the detected adapter kinds (AdapterSpec.kind) a found file may have.
        encoder: the CLIP vision model the adapter needs ("ViT-H/14", "ViT-bigG/14"), or None.
    """

    adapter: WantedFile
    clip_vision: WantedFile | None
    kinds: frozenset[str]
    encoder: str | None


CLIP_VISION_FILES: dict[str, WantedFile] = {
    VIT_H: WantedFile("CLIP vision", "clip_vision", (
        "CLIP-ViT-H-14-laion2B-s32B-b79K", "clip_vision_h", "clip-vit-h-14", "CLIP-ViT-H-14", "ViT-H-14",
        "ViT-H-14-laion2B-s32B-b79K", "open_clip_vit_h_14", "IPAdapter_image_encoder_sd15",
        "ip_adapter_clip_vision_vith", "clip_vision_vit_h"),
        _H94 + "models/image_encoder/model.safetensors", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    VIT_BIGG: WantedFile("CLIP vision", "clip_vision", (
        "CLIP-ViT-bigG-14-laion2B-39B-b160k", "clip_vision_g", "clip-vit-bigg-14", "CLIP-ViT-bigG-14",
        "ViT-bigG-14", "ViT-bigG-14-laion2B-39B-b160k", "open_clip_vit_bigg_14", "IPAdapter_image_encoder_sdxl",
        "clip_vision_vit_g"),
        _H94 + "sdxl_models/image_encoder/model.safetensors", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"),
}


def _adapter(base_url: str, path: str, *renamings: str) -> WantedFile:
    """The official file at `base_url + path` (its name first), then renamings."""
    file_name = path.rsplit("/", 1)[-1]
    stem = file_name.rsplit(".", 1)[0]
    return WantedFile("IP-Adapter", "ipadapter", (stem, *renamings), base_url + path, file_name)


def _preset(adapter: WantedFile, kinds: str, encoder: str | None) -> PresetFiles:
    clip = CLIP_VISION_FILES[encoder] if encoder else None
    return PresetFiles(adapter, clip, frozenset(kinds.split(",")), encoder)


PRESET_TABLE: dict[tuple[BaseFamily, str], PresetFiles] = {
    (SD15, "standard"): _preset(_adapter(_H94, "models/ip-adapter_sd15.safetensors"), "base", VIT_H),
    (SD15, "light"): _preset(_adapter(_H94, "models/ip-adapter_sd15_light_v11.bin", "ip-adapter_sd15_light"),
                             "light", VIT_H),
    (SD15, "plus"): _preset(_adapter(_H94, "models/ip-adapter-plus_sd15.safetensors"), "plus", VIT_H),
    (SD15, "plus face"): _preset(_adapter(_H94, "models/ip-adapter-plus-face_sd15.safetensors"), "plus-face", VIT_H),
    (SD15, "full face"): _preset(_adapter(_H94, "models/ip-adapter-full-face_sd15.safetensors"), "full-face", VIT_H),
    (SD15, "vit-G"): _preset(_adapter(_H94, "models/ip-adapter_sd15_vit-G.safetensors"), "vit-g", VIT_BIGG),
    (SD15, "composition"): _preset(_adapter(_OSTRIS, "ip_plus_composition_sd15.safetensors"), "composition", VIT_H),
    (SDXL, "standard"): _preset(_adapter(_H94, "sdxl_models/ip-adapter_sdxl_vit-h.safetensors"), "base", VIT_H),
    (SDXL, "plus"): _preset(_adapter(_H94, "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
                                     "ip-adapter-plus_sdxl"), "plus", VIT_H),
    (SDXL, "plus face"): _preset(_adapter(_H94, "sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors",
                                          "ip-adapter-plus-face_sdxl"), "plus-face", VIT_H),
    (SDXL, "vit-G"): _preset(_adapter(_H94, "sdxl_models/ip-adapter_sdxl.safetensors", "ip-adapter_sdxl_vit-g"),
                             "base", VIT_BIGG),
    (SDXL, "composition"): _preset(_adapter(_OSTRIS, "ip_plus_composition_sdxl.safetensors"), "composition", VIT_H),
    (SD15, "faceid"): _preset(_adapter(_FACEID, "ip-adapter-faceid_sd15.bin"), "faceid", None),
    (SD15, "faceid plus"): _preset(_adapter(_FACEID, "ip-adapter-faceid-plus_sd15.bin"), "faceid-plus", VIT_H),
    (SD15, "faceid plus v2"): _preset(_adapter(_FACEID, "ip-adapter-faceid-plusv2_sd15.bin"), "faceid-plusv2",
                                      VIT_H),
    (SD15, "faceid portrait"): _preset(_adapter(_FACEID, "ip-adapter-faceid-portrait-v11_sd15.bin",
                                                "ip-adapter-faceid-portrait_sd15"), "faceid-portrait", None),
    (SDXL, "faceid"): _preset(_adapter(_FACEID, "ip-adapter-faceid_sdxl.bin"), "faceid", None),
    (SDXL, "faceid plus v2"): _preset(_adapter(_FACEID, "ip-adapter-faceid-plusv2_sdxl.bin"), "faceid-plusv2",
                                      VIT_H),
    (SDXL, "faceid portrait"): _preset(_adapter(_FACEID, "ip-adapter-faceid-portrait_sdxl.bin"), "faceid-portrait",
                                       None),
    (SDXL, "faceid portrait unnorm"): _preset(_adapter(_FACEID, "ip-adapter-faceid-portrait_sdxl_unnorm.bin"),
                                              "faceid-portrait-unnorm", None),
}

#: Presets without an official file for a family, with what to use instead.
UNAVAILABLE: dict[tuple[BaseFamily, str], str] = {
    (SDXL, "light"): "there is no official SDXL light adapter; use 'standard' (or lower the weight)",
    (SDXL, "full face"): "there is no official SDXL full-face adapter; use 'plus face'",
    (SDXL, "faceid plus"): "FaceID Plus (v1) exists for SD1.5 only; use 'faceid plus v2'",
    (SD15, "faceid portrait unnorm"): "the unnormalised portrait adapter exists for SDXL only; use 'faceid portrait'",
}


def preset_files(family: BaseFamily, preset: str) -> PresetFiles:
    """The files `preset` loads for `family`.

    Raises:
        InvalidOptionError: an unknown preset, or one without an official file for `family`.
    """
    if preset not in PRESETS:
        raise InvalidOptionError(f"Unknown preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    if (family, preset) in UNAVAILABLE:
        raise InvalidOptionError(f"Preset '{preset}' has no {family.value} version: "
                                 f"{UNAVAILABLE[(family, preset)]}.")
    return PRESET_TABLE[(family, preset)]


def name_key(name: str) -> str:
    """A file name (no extension) as compared: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _parts(relative: str) -> list[str]:
    return re.split(r"[\\/]", relative)


def is_hidden(relative: str) -> bool:
    """A hidden file or a file in a hidden folder (".name", macOS "._name" metadata)."""
    return any(part.startswith(".") for part in _parts(relative))


def _split(relative: str) -> tuple[str, str]:
    base = _parts(relative)[-1]
    stem, dot, ext = base.rpartition(".")
    return (stem, f".{ext.lower()}") if dot else (base, "")


def find_file(wanted: WantedFile, listing: Iterable[str], include_hidden: bool = False) -> str | None:
    """The first entry of `listing` (file names relative to their folder, sub-folders allowed) that `wanted`
    accepts: names in order, `.safetensors` before `.bin`, earlier listing entries first; hidden files are skipped
    unless `include_hidden`."""
    first: dict[tuple[str, str], str] = {}
    for relative in listing:
        if is_hidden(relative) != include_hidden:
            continue
        stem, ext = _split(relative)
        first.setdefault((name_key(stem), ext), relative)
    for name in wanted.names:
        for ext in EXTENSIONS:
            hit = first.get((name_key(name), ext))
            if hit is not None:
                return hit
    return None


def _accepted(wanted: WantedFile) -> str:
    official = wanted.names[0]
    others = [f"{n}.safetensors / .bin" for n in wanted.names[1:]]
    also = f"; also accepted: {', '.join(others)}" if others else ""
    return f"{official}.safetensors or {official}.bin{also}"


def missing_files_error(preset: str, family: BaseFamily, missing: Sequence[tuple[WantedFile, Sequence[str], str | None]]
                        ) -> MissingModelError:
    """The error for files a preset needs but no folder holds.

    Args:
        missing: per missing file: what was wanted, the folders searched, and a hidden file that would have matched
            (or None).
    """
    lines = [f"Preset '{preset}' for {family.value} needs {len(missing)} file(s) that were not found "
             "(names compare case-insensitively, ignoring '-', '_', '.' and spaces):"]
    for wanted, folders, hidden in missing:
        lines.append(f"- {wanted.role} file, accepted names: {_accepted(wanted)}. Searched: "
                     f"{', '.join(folders) or '(no folder registered)'}. Download {wanted.url} and save it as "
                     f"{wanted.save_as} in models/{wanted.folder} (or any folder listed above).")
        if hidden is not None:
            lines.append(f"  '{hidden}' was ignored: it is a hidden file (e.g. macOS '._' metadata), not a model.")
    return MissingModelError("\n".join(lines))
