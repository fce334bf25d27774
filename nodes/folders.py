"""The `ipadapter` model folder, shared with existing installs (models/ipadapter and extra_model_paths.yaml)."""

from __future__ import annotations

import os

import folder_paths

FOLDER = "ipadapter"
#: The loader lists only these; other files in the folder (previews, notes) are ignored.
EXTENSIONS = {".safetensors", ".bin"}


def register_ipadapter_folder() -> None:
    """Keep every path already registered (the yaml is applied before packs load), add models/ipadapter if
    missing, and restrict an empty extension set (which means "every file") to adapter files."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], set(EXTENSIONS))
        return
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER]
    if default not in paths:
        paths.append(default)
    if not extensions:
        extensions.update(EXTENSIONS)


def adapter_files() -> list[str]:
    """The combo of LoadIPAdapter: `.safetensors` and `.bin` files of every registered ipadapter path."""
    return [f for f in folder_paths.get_filename_list(FOLDER) if os.path.splitext(f)[1].lower() in EXTENSIONS]
