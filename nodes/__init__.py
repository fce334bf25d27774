"""ComfyUI glue: the pack's V1 nodes (ids fixed by the node contract), registered by the package root."""

from .apply_batch import ApplyIPAdapterBatch
from .apply_ip_adapter import ApplyIPAdapter
from .apply_ip_adapter_faceid import ApplyIPAdapterFaceID
from .apply_style_composition import ApplyIPAdapterStyleComposition
from .apply_tiled import ApplyIPAdapterTiled
from .combine_image_prompts import CombineImagePrompts
from .encode_face_prompt import EncodeFacePrompt
from .encode_image_prompt import EncodeImagePrompt
from .folders import register_ipadapter_folder
from .frame_weights import FrameWeights
from .image_prompt_files import register_image_prompts_folder
from .insightface_folder import register_insightface_folder
from .load_image_prompt import LoadImagePrompt
from .load_insightface import LoadInsightFace
from .load_ip_adapter import LoadIPAdapter
from .load_ip_adapter_preset import LoadIPAdapterPreset
from .negative_image_noise import NegativeImageNoise
from .save_image_prompt import SaveImagePrompt

register_ipadapter_folder()
register_image_prompts_folder()
register_insightface_folder()

NODE_CLASS_MAPPINGS = {
    "LoadIPAdapter": LoadIPAdapter,
    "EncodeImagePrompt": EncodeImagePrompt,
    "ApplyIPAdapter": ApplyIPAdapter,
    "LoadIPAdapterPreset": LoadIPAdapterPreset,
    "NegativeImageNoise": NegativeImageNoise,
    "CombineImagePrompts": CombineImagePrompts,
    "SaveImagePrompt": SaveImagePrompt,
    "LoadImagePrompt": LoadImagePrompt,
    "ApplyIPAdapterStyleComposition": ApplyIPAdapterStyleComposition,
    "LoadInsightFace": LoadInsightFace,
    "EncodeFacePrompt": EncodeFacePrompt,
    "ApplyIPAdapterFaceID": ApplyIPAdapterFaceID,
    "ApplyIPAdapterBatch": ApplyIPAdapterBatch,
    "FrameWeights": FrameWeights,
    "ApplyIPAdapterTiled": ApplyIPAdapterTiled,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadIPAdapter": "Load IP-Adapter",
    "EncodeImagePrompt": "Encode Image Prompt",
    "ApplyIPAdapter": "Apply IP-Adapter",
    "LoadIPAdapterPreset": "Load IP-Adapter Preset",
    "NegativeImageNoise": "Negative Image Noise",
    "CombineImagePrompts": "Combine Image Prompts",
    "SaveImagePrompt": "Save Image Prompt",
    "LoadImagePrompt": "Load Image Prompt",
    "ApplyIPAdapterStyleComposition": "Apply IP-Adapter Style & Composition",
    "LoadInsightFace": "Load InsightFace",
    "EncodeFacePrompt": "Encode Face Prompt",
    "ApplyIPAdapterFaceID": "Apply IP-Adapter FaceID",
    "ApplyIPAdapterBatch": "Apply IP-Adapter Batch",
    "FrameWeights": "Frame Weights",
    "ApplyIPAdapterTiled": "Apply IP-Adapter Tiled",
}
