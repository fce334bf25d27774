"""IP-Adapter core: checkpoint loading and detection, projection models, UNet layout and decoupled attention.

Pure torch (plus safetensors); nothing here imports ComfyUI.
"""

from .adapter import IPAdapter, load_ip_adapter
from .attention import (
    EMBEDS_SCALING,
    ImageTerm,
    decoupled_attention,
    mask_for_queries,
    rows_for_chunks,
    scale_embeds,
    sdpa_attention,
)
from .checkpoint import read_checkpoint
from .encoding import COMBINE_METHODS, ClipEncoding, ImagePrompt, combine
from .errors import (
    CheckpointFormatError,
    DatasetError,
    IncompatibleEncodingError,
    IncompatibleModelError,
    InvalidOptionError,
    IPAdapterError,
    MissingDependencyError,
    TrainingSetupError,
    UnsafeCheckpointError,
)
from .kv_cache import ImageKV
from .layout import LAYOUTS, SD15_LAYOUT, SDXL_LAYOUT, AttnLayer, BaseFamily, UNetLayout
from .spec import AdapterSpec, ClipOutput, ProjectionType

__all__ = [
    "COMBINE_METHODS", "EMBEDS_SCALING", "LAYOUTS", "SD15_LAYOUT", "SDXL_LAYOUT",
    "AdapterSpec", "AttnLayer", "BaseFamily", "CheckpointFormatError", "ClipEncoding", "ClipOutput", "DatasetError",
    "IPAdapter", "IPAdapterError", "ImageKV", "ImagePrompt", "ImageTerm", "IncompatibleEncodingError",
    "IncompatibleModelError", "InvalidOptionError", "MissingDependencyError", "TrainingSetupError",
    "ProjectionType", "UNetLayout", "UnsafeCheckpointError", "combine", "decoupled_attention", "load_ip_adapter",
    "mask_for_queries", "read_checkpoint", "rows_for_chunks", "scale_embeds", "sdpa_attention",
]
