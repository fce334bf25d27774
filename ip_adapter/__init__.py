"""IP-Adapter core: checkpoint loading and detection, projection models, UNet layout and decoupled attention.

Pure torch (plus safetensors); nothing here imports ComfyUI.
"""

from .adapter import IPAdapter, load_ip_adapter
from .attention import ImageTerm, decoupled_attention, sdpa_attention
from .checkpoint import read_checkpoint
from .encoding import COMBINE_METHODS, ClipEncoding, ImagePrompt, combine
from .errors import (
    CheckpointFormatError,
    DatasetError,
    ImagePromptFileError,
    IncompatibleEncodingError,
    IncompatibleModelError,
    InvalidOptionError,
    IPAdapterError,
    MissingDependencyError,
    MissingModelError,
    NoFaceError,
    TrainingSetupError,
    UnsafeCheckpointError,
)
from .face import FaceEmbeds
from .face_tokens import faceid_tokens
from .kv_cache import ImageKV
from .layout import LAYOUTS, SD15_LAYOUT, SDXL_LAYOUT, AttnLayer, BaseFamily, UNetLayout
from .masks import mask_for_queries
from .rows import Role, batch_layout, role_of_conditioning
from .scaling import EMBEDS_SCALING, scale_embeds
from .spec import AdapterSpec, ClipOutput, ProjectionType

__all__ = [
    "COMBINE_METHODS", "EMBEDS_SCALING", "LAYOUTS", "SD15_LAYOUT", "SDXL_LAYOUT", "AdapterSpec", "AttnLayer",
    "BaseFamily", "CheckpointFormatError", "ClipEncoding", "ClipOutput", "DatasetError", "FaceEmbeds", "IPAdapter",
    "IPAdapterError", "ImageKV", "ImagePrompt", "ImagePromptFileError", "ImageTerm", "IncompatibleEncodingError",
    "IncompatibleModelError", "InvalidOptionError", "MissingDependencyError", "MissingModelError", "NoFaceError",
    "ProjectionType", "Role", "TrainingSetupError", "UNetLayout", "UnsafeCheckpointError", "batch_layout", "combine",
    "decoupled_attention", "faceid_tokens", "load_ip_adapter", "mask_for_queries", "read_checkpoint",
    "role_of_conditioning", "scale_embeds", "sdpa_attention",
]
