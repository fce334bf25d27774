"""ComfyUI glue: the pack's V1 nodes (ids fixed by the node contract), registered by the package root."""

from .apply_batch import ApplyIPAdapterBatch
from .apply_ip_adapter import ApplyIPAdapter
from .apply_tiled import ApplyIPAdapterTiled
from .encode_image_prompt import EncodeImagePrompt
from .folders import register_ipadapter_folder
from .frame_weights import FrameWeights
from .load_ip_adapter import LoadIPAdapter

register_ipadapter_folder()

NODE_CLASS_MAPPINGS = {
    "LoadIPAdapter": LoadIPAdapter,
    "EncodeImagePrompt": EncodeImagePrompt,
    "ApplyIPAdapter": ApplyIPAdapter,
    "ApplyIPAdapterBatch": ApplyIPAdapterBatch,
    "FrameWeights": FrameWeights,
    "ApplyIPAdapterTiled": ApplyIPAdapterTiled,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadIPAdapter": "Load IP-Adapter",
    "EncodeImagePrompt": "Encode Image Prompt",
    "ApplyIPAdapter": "Apply IP-Adapter",
    "ApplyIPAdapterBatch": "Apply IP-Adapter Batch",
    "FrameWeights": "Frame Weights",
    "ApplyIPAdapterTiled": "Apply IP-Adapter Tiled",
}
