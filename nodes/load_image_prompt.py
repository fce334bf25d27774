"""LoadImagePrompt: a saved .safetensors image prompt -> IMAGE_PROMPT (never unpickles)."""

from __future__ import annotations

import os

from ..ip_adapter.prompt_file import PreparedImagePrompt, load_image_prompt
from .image_prompt_files import prompt_file_choices, resolve_prompt_file


class LoadImagePrompt:
    DESCRIPTION = (
        "Loads an image prompt saved by Save Image Prompt, from the output folder (entries ending in [output]) or "
        "models/image_prompts. Only .safetensors files are read; nothing is unpickled. Apply checks, as for a freshly "
        "encoded prompt, that it was encoded with the CLIP vision model the adapter expects."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE_PROMPT",)
    OUTPUT_TOOLTIPS = ("The saved image prompt, equal to what was saved.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"image_prompt_file": (prompt_file_choices(), {"tooltip": "A saved image prompt: from "
                "the output folder ([output]) or models/image_prompts."})}}

    @classmethod
    def IS_CHANGED(cls, image_prompt_file: str) -> str:
        path = resolve_prompt_file(image_prompt_file)
        stat = os.stat(path)
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"

    def load(self, image_prompt_file: str) -> tuple[PreparedImagePrompt]:
        return (load_image_prompt(resolve_prompt_file(image_prompt_file)),)
