"""LoadIPAdapter: an adapter file from the `ipadapter` model folder -> IP_ADAPTER."""

from __future__ import annotations

import logging

import folder_paths

from .folders import FOLDER, adapter_files
from .loaded import LoadedAdapter, load_adapter

log = logging.getLogger(__name__)


class LoadIPAdapter:
    DESCRIPTION = (
        "Loads an IP-Adapter checkpoint (.safetensors or .bin) from models/ipadapter. The kind (base, light, plus, "
        "plus-face, full-face, vit-G, FaceID, XLabs v1/v2, InstantX...), the base model (SD1.5, SDXL, FLUX.1 or "
        "SD3.5 Large) and the CLIP vision model it needs are read from the weights; a wrong or damaged file fails "
        "here with an explanation."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "load"
    RETURN_TYPES = ("IP_ADAPTER",)
    OUTPUT_TOOLTIPS = ("The loaded adapter; connect it to Apply IP-Adapter.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        tip = "An IP-Adapter file in models/ipadapter (or an 'ipadapter:' path of extra_model_paths.yaml)."
        return {"required": {"ipadapter_file": (adapter_files(), {"tooltip": tip})}}

    def load(self, ipadapter_file: str) -> tuple[LoadedAdapter]:
        loaded = load_adapter(folder_paths.get_full_path_or_raise(FOLDER, ipadapter_file))
        log.info("Loaded %s: %s", ipadapter_file, loaded.adapter.spec.describe())
        return (loaded,)
