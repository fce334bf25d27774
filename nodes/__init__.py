"""ComfyUI glue: the pack's V1 nodes (ids fixed by the node contract), registered by the package root."""

from .apply_ip_adapter import ApplyIPAdapter
from .apply_ip_adapter_faceid import ApplyIPAdapterFaceID
from .encode_face_prompt import EncodeFacePrompt
from .encode_image_prompt import EncodeImagePrompt
from .folders import register_ipadapter_folder
from .insightface_folder import register_insightface_folder
from .load_insightface import LoadInsightFace
from .load_ip_adapter import LoadIPAdapter

register_ipadapter_folder()
register_insightface_folder()

NODE_CLASS_MAPPINGS = {
    "LoadIPAdapter": LoadIPAdapter,
    "EncodeImagePrompt": EncodeImagePrompt,
    "ApplyIPAdapter": ApplyIPAdapter,
    "LoadInsightFace": LoadInsightFace,
    "EncodeFacePrompt": EncodeFacePrompt,
    "ApplyIPAdapterFaceID": ApplyIPAdapterFaceID,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadIPAdapter": "Load IP-Adapter",
    "EncodeImagePrompt": "Encode Image Prompt",
    "ApplyIPAdapter": "Apply IP-Adapter",
    "LoadInsightFace": "Load InsightFace",
    "EncodeFacePrompt": "Encode Face Prompt",
    "ApplyIPAdapterFaceID": "Apply IP-Adapter FaceID",
}
