"""The `insightface` model folder: InsightFace model packs live in `models/insightface/models/<pack>/*.onnx` (the
layout InsightFace itself and the peer pack use), plus any `insightface:` entry of extra_model_paths.yaml."""

from __future__ import annotations

import os
from dataclasses import dataclass

import folder_paths

from ..ip_adapter import MissingModelError

FOLDER = "insightface"
#: InsightFace looks for packs in `<root>/models/<name>`.
PACKS_SUBFOLDER = "models"
MODEL_EXTENSION = ".onnx"
DEFAULT_PACK = "buffalo_l"
#: The files of the packs users download, for the "where to put it" messages.
PACK_FILES = {
    "buffalo_l": ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx"),
    "antelopev2": ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"),
}


@dataclass(frozen=True)
class ModelPack:
    """One pack on disk: InsightFace's `root` and `name` (it reads `<root>/models/<name>/*.onnx`)."""

    name: str
    root: str

    @property
    def path(self) -> str:
        return os.path.join(self.root, PACKS_SUBFOLDER, self.name)


def register_insightface_folder() -> None:
    """Keep every path already registered (the yaml is applied before packs load), add models/insightface if
    missing, and restrict an empty extension set (which means "every file") to ONNX models."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], {MODEL_EXTENSION})
        return
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER]
    if default not in paths:
        paths.append(default)
    if not extensions:
        extensions.add(MODEL_EXTENSION)


def roots() -> list[str]:
    return list(folder_paths.get_folder_paths(FOLDER))


def _onnx_files(path: str) -> list[str]:
    try:
        return sorted(f for f in os.listdir(path) if f.lower().endswith(MODEL_EXTENSION) and not f.startswith("."))
    except OSError:
        return []


def _packs() -> dict[str, ModelPack]:
    found: dict[str, ModelPack] = {}
    for root in roots():
        base = os.path.join(root, PACKS_SUBFOLDER)
        names = sorted(os.listdir(base)) if os.path.isdir(base) else []
        for name in names:
            if name not in found and _onnx_files(os.path.join(base, name)):
                found[name] = ModelPack(name, root)
    return found


def pack_names() -> list[str]:
    """The combo of Load InsightFace: packs holding .onnx files, `buffalo_l` first. With none installed it still
    offers `buffalo_l`, so that loading it explains where the files go."""
    names = sorted(_packs(), key=lambda n: (n != DEFAULT_PACK, n.lower()))
    return names or [DEFAULT_PACK]


def find_pack(name: str) -> ModelPack:
    """The pack called `name`, checked before InsightFace sees it: InsightFace downloads a missing pack silently
    and fails on an empty one with a bare assertion.

    Raises:
        MissingModelError: no registered root holds `models/<name>/*.onnx`; the message lists where to put what.
    """
    pack = _packs().get(name)
    if pack is not None:
        return pack
    candidates = [os.path.join(root, PACKS_SUBFOLDER, name) for root in roots()]
    default = os.path.join(folder_paths.models_dir, FOLDER, PACKS_SUBFOLDER, name)
    wanted = next((c for c in candidates if os.path.isdir(c)), candidates[0] if candidates else default)
    files = PACK_FILES.get(name)
    listing = f" ({', '.join(files)})" if files else ""
    state = "is empty (no .onnx files)" if os.path.isdir(wanted) else "does not exist"
    nested = os.path.join(wanted, name)
    if _onnx_files(nested):  # some pack zips hold a folder of their own name
        state = f"holds its .onnx files one level too deep, in {nested}; move them up into {wanted}"
    raise MissingModelError(
        f"InsightFace model pack '{name}' not found: {wanted} {state}. Download the {name} pack and unzip its .onnx "
        f"files{listing} into that folder (the pack is never downloaded automatically). Folders searched: "
        f"{', '.join(os.path.join(r, PACKS_SUBFOLDER) for r in roots())}.")
