"""ComfyUI glue: the pack's V1 nodes (ids fixed by the node contract), registered by the package root."""

from .apply_ip_adapter import ApplyIPAdapter
from .encode_image_prompt import EncodeImagePrompt
from .folders import register_ipadapter_folder
from .load_ip_adapter import LoadIPAdapter

register_ipadapter_folder()

NODE_CLASS_MAPPINGS = {
    "LoadIPAdapter": LoadIPAdapter,
    "EncodeImagePrompt": EncodeImagePrompt,
    "ApplyIPAdapter": ApplyIPAdapter,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadIPAdapter": "Load IP-Adapter",
    "EncodeImagePrompt": "Encode Image Prompt",
    "ApplyIPAdapter": "Apply IP-Adapter",
}
