"""LoadIPAdapterPreset: MODEL (only its base family is read) + preset -> IP_ADAPTER and the CLIP_VISION it needs."""

from __future__ import annotations

import logging

import folder_paths
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..ip_adapter import BaseFamily, IncompatibleModelError
from ..ip_adapter.presets import PRESETS, PresetFiles, WantedFile, find_file, missing_files_error, preset_files
from .clip_vision_files import load_clip_vision
from .loaded import LoadedAdapter, load_adapter
from .model_checks import FAMILY_BY_CONTEXT

log = logging.getLogger(__name__)


def model_family(model) -> BaseFamily:
    """SD1.5 or SDXL, from the model's UNet context width; anything else is an IncompatibleModelError."""
    diffusion_model = getattr(model.model, "diffusion_model", None)
    context = model.model.model_config.unet_config.get("context_dim")
    if isinstance(diffusion_model, UNetModel) and context in FAMILY_BY_CONTEXT:
        return FAMILY_BY_CONTEXT[context]
    raise IncompatibleModelError(
        f"Load IP-Adapter Preset knows presets for SD1.5 and SDXL models, but this model is a "
        f"{type(diffusion_model).__name__} with context width {context}. Use an SD1.5 or SDXL checkpoint, or load a "
        "matching adapter with Load IP-Adapter.")


def _locate(wanted: WantedFile) -> tuple[str | None, list[str], str | None]:
    """(full path or None, folders searched, a hidden file that would have matched or None)."""
    listing = folder_paths.get_filename_list(wanted.folder)
    found = find_file(wanted, listing)
    path = folder_paths.get_full_path(wanted.folder, found) if found is not None else None
    hidden = None if path is not None else find_file(wanted, listing, include_hidden=True)
    return path, list(folder_paths.get_folder_paths(wanted.folder)), hidden


def check_found_adapter(preset: str, family: BaseFamily, files: PresetFiles, loaded: LoadedAdapter) -> None:
    """The file found by name must really be what the preset promises (a renamed or misnamed file is caught here,
    before its CLIP vision model is paired with it)."""
    spec = loaded.adapter.spec
    encoder_ok = files.encoder is None or spec.encoder == files.encoder
    if spec.family is family and spec.kind in files.kinds and encoder_ok:
        return
    wanted = f"a {family.value} {'/'.join(sorted(files.kinds))} adapter" + (
        f" for {files.encoder}" if files.encoder else "")
    raise IncompatibleModelError(
        f"Preset '{preset}' found '{loaded.name}' by its name, but the file is a {spec.describe()}, not {wanted}. "
        "The file is misnamed: give it its real official name (or remove it), or pick the preset that matches it.")


class LoadIPAdapterPreset:
    DESCRIPTION = (
        "Picks the official IP-Adapter for the model's base family (SD1.5 or SDXL) and the CLIP vision model it "
        "needs, from the files you already have in models/ipadapter and models/clip_vision (every folder of "
        "extra_model_paths.yaml included). Names match without regard to case, '-' or '_'; .safetensors is preferred "
        "over .bin; hidden files are ignored. A missing file is reported with its accepted names, the folders "
        "searched and its download address. FaceID and FaceID Portrait need no CLIP vision: their clip_vision "
        "output is empty (leave it unconnected)."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "load"
    RETURN_TYPES = ("IP_ADAPTER", "CLIP_VISION")
    OUTPUT_TOOLTIPS = (
        "The preset's adapter for this model's family.",
        "The CLIP vision model the adapter needs (what Load CLIP Vision gives); empty for FaceID and FaceID "
        "Portrait, which use only the face embedding.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL", {"tooltip": "Only its base family (SD1.5 or SDXL) is read; the model is not changed."}),
            "preset": (list(PRESETS), {"tooltip": "standard: balanced; light: subtle (SD1.5); plus: closer to the "
                       "reference; plus face / full face: portraits; vit-G: the ViT-bigG encoder; composition: layout "
                       "only; faceid ...: identity from a face (needs Encode Face Prompt)."}),
        }}

    def load(self, model, preset: str) -> tuple:
        family = model_family(model)
        files = preset_files(family, preset)
        wanted = [files.adapter] + ([files.clip_vision] if files.clip_vision is not None else [])
        located = {w: _locate(w) for w in wanted}
        missing = [(w, folders, hidden) for w, (path, folders, hidden) in located.items() if path is None]
        if missing:
            raise missing_files_error(preset, family, missing)
        loaded = load_adapter(located[files.adapter][0])
        check_found_adapter(preset, family, files, loaded)
        clip_vision = load_clip_vision(located[files.clip_vision][0]) if files.clip_vision is not None else None
        log.info("Preset '%s' (%s): %s + %s", preset, family.value, loaded.name,
                 located[files.clip_vision][0] if files.clip_vision is not None else "no CLIP vision")
        return (loaded, clip_vision)
