"""Where saved image prompts live: the output folder (Save Image Prompt writes there) and models/image_prompts."""

from __future__ import annotations

import os

import folder_paths

from ..ip_adapter import ImagePromptFileError
from ..ip_adapter.presets import is_hidden
from ..ip_adapter.prompt_file import EXTENSION, is_image_prompt_file

FOLDER = "image_prompts"
#: Suffix of combo entries in the output folder, the host's own annotation (as LoadImage's "name [output]").
OUTPUT_TAG = " [output]"
_HEADER_CACHE: dict[tuple[str, int, int], bool] = {}


def register_image_prompts_folder() -> None:
    """Register models/image_prompts (keeping any extra_model_paths.yaml entry), listing .safetensors files only."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], {EXTENSION})
        return
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER]
    if default not in paths:
        paths.append(default)
    if not extensions:
        extensions.add(EXTENSION)


def _is_prompt(path: str) -> bool:
    """Header check, cached by path, size and modification time (the output folder also holds other packs'
    safetensors, e.g. saved checkpoints)."""
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _HEADER_CACHE:
        _HEADER_CACHE[key] = is_image_prompt_file(path)
    return _HEADER_CACHE[key]


def output_prompt_files() -> list[str]:
    """Image prompts saved in the output folder, relative to it."""
    root = folder_paths.get_output_directory()
    found = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in files:
            path = os.path.join(directory, name)
            if name.lower().endswith(EXTENSION) and not name.startswith(".") and _is_prompt(path):
                found.append(os.path.relpath(path, root))
    return sorted(found)


def prompt_file_choices() -> list[str]:
    """Load Image Prompt's combo: the output folder's prompts (tagged " [output]"), then models/image_prompts."""
    models = [f for f in folder_paths.get_filename_list(FOLDER)
              if f.lower().endswith(EXTENSION) and not is_hidden(f)]
    return [f + OUTPUT_TAG for f in output_prompt_files()] + sorted(models)


def resolve_prompt_file(choice: str) -> str:
    """The full path of a combo entry; never a path outside its folder."""
    if choice.endswith(OUTPUT_TAG):
        root = os.path.realpath(folder_paths.get_output_directory())
        path = os.path.realpath(os.path.join(root, choice[: -len(OUTPUT_TAG)]))
        inside = os.path.commonpath([root, path]) == root
    else:
        path, inside = folder_paths.get_full_path(FOLDER, choice), True
    if path is None or not inside or not os.path.isfile(path):
        folders = [folder_paths.get_output_directory(), *folder_paths.get_folder_paths(FOLDER)]
        raise ImagePromptFileError(f"Saved image prompt '{choice}' was not found in {', '.join(folders)}. Run the "
                                   "Save Image Prompt node first, or pick a listed file.")
    return path
