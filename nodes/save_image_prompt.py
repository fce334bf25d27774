"""SaveImagePrompt: IMAGE_PROMPT -> one .safetensors file (tensors + metadata) under the output folder."""

from __future__ import annotations

import logging
import os

import folder_paths

from ..ip_adapter import ImagePrompt
from ..ip_adapter.prompt_file import EXTENSION, save_image_prompt

log = logging.getLogger(__name__)


class SaveImagePrompt:
    DESCRIPTION = (
        "Saves an image prompt (the CLIP vision encodings of its references and their negatives) as one .safetensors "
        "file in the output folder, with metadata: encoder width, number of images and crop. Load Image Prompt "
        "lists it, so a reference set is encoded once and reused without the images or the CLIP vision model."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "image_prompt": ("IMAGE_PROMPT", {"tooltip": "The image prompt to save (e.g. from Combine Image "
                                                         "Prompts)."}),
            "filename_prefix": ("STRING", {"default": "image_prompts/ip", "tooltip": "Sub-folder and name under the "
                                "output folder; a counter is appended (image_prompts/ip_00001_.safetensors)."}),
        }}

    def save(self, image_prompt: ImagePrompt, filename_prefix: str) -> dict:
        output = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output)
        file_name = f"{name}_{counter:05}_{EXTENSION}"
        os.makedirs(folder, exist_ok=True)
        meta = save_image_prompt(image_prompt, os.path.join(folder, file_name))
        log.info("Saved image prompt %s (%s images)", os.path.join(subfolder, file_name), meta["num_images"])
        return {"ui": {"image_prompts": [{"filename": file_name, "subfolder": subfolder, "type": "output"}]}}
