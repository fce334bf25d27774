"""IP-Adapter nodes for ComfyUI: image prompts through decoupled cross-attention (arXiv 2308.06721).

The nodes register only inside ComfyUI; anywhere else (tests, tools) this package imports cleanly and exposes empty
mappings, while the `ip_adapter` core stays usable on its own.
"""

import importlib.util
import logging

log = logging.getLogger(__name__)

#: Served by ComfyUI: web/docs/<NodeId>.md are the node help pages the frontend shows.
WEB_DIRECTORY = "./web"

if importlib.util.find_spec("folder_paths") is not None and importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # not running inside ComfyUI
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
