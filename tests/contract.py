"""The public node contract (../shared/reference/node-contract.md) as data, for tests of nodes and workflows."""

from __future__ import annotations

WEIGHT_TYPES = [
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
    "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
    "style transfer precise", "composition precise",
]
COMBINE = ["concat", "add", "subtract", "average", "norm average"]
EMBEDS_SCALING = ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]
TIMINGS = ["linear", "ease in", "ease out", "ease in-out", "custom", "random"]

#: node id -> (display name, required inputs [(name, type or combo list, default)], optional inputs, outputs)
NODES = {
    "LoadIPAdapter": ("Load IP-Adapter", [("ipadapter_file", "COMBO", None)], [], ["IP_ADAPTER"]),
    "EncodeImagePrompt": (
        "Encode Image Prompt",
        [("clip_vision", "CLIP_VISION", None), ("image", "IMAGE", None), ("crop", ["center", "none"], "center")],
        [("negative_image", "IMAGE", None)],
        ["IMAGE_PROMPT"],
    ),
    "ApplyIPAdapter": (
        "Apply IP-Adapter",
        [("model", "MODEL", None), ("ipadapter", "IP_ADAPTER", None), ("image_prompt", "IMAGE_PROMPT", None),
         ("weight", "FLOAT", 1.0), ("weight_type", WEIGHT_TYPES, "linear"), ("combine_images", COMBINE, "concat"),
         ("start_at", "FLOAT", 0.0), ("end_at", "FLOAT", 1.0), ("embeds_scaling", EMBEDS_SCALING, "V only")],
        [("attn_mask", "MASK", None)],
        ["MODEL"],
    ),
    "ApplyIPAdapterBatch": (
        "Apply IP-Adapter Batch",
        [("model", "MODEL", None), ("ipadapter", "IP_ADAPTER", None), ("image_prompt", "IMAGE_PROMPT", None),
         ("weight", "FLOAT", 1.0), ("weight_type", WEIGHT_TYPES, "linear"), ("start_at", "FLOAT", 0.0),
         ("end_at", "FLOAT", 1.0), ("embeds_scaling", EMBEDS_SCALING, "V only")],
        [("attn_mask", "MASK", None), ("frame_weights", "FRAME_WEIGHTS", None)],
        ["MODEL"],
    ),
    "FrameWeights": (
        "Frame Weights",
        [("weights", "STRING", "1.0, 0.0"), ("timing", TIMINGS, "linear"), ("frames", "INT", 16),
         ("start_frame", "INT", 0), ("end_frame", "INT", 9999), ("add_starting_frames", "INT", 0),
         ("add_ending_frames", "INT", 0), ("seed", "INT", 0)],
        [],
        ["FRAME_WEIGHTS", "FRAME_WEIGHTS", "INT"],
    ),
    "ApplyIPAdapterTiled": (
        "Apply IP-Adapter Tiled",
        [("model", "MODEL", None), ("ipadapter", "IP_ADAPTER", None), ("clip_vision", "CLIP_VISION", None),
         ("image", "IMAGE", None), ("weight", "FLOAT", 1.0), ("weight_type", WEIGHT_TYPES, "linear"),
         ("start_at", "FLOAT", 0.0), ("end_at", "FLOAT", 1.0), ("sharpening", "FLOAT", 0.0),
         ("embeds_scaling", EMBEDS_SCALING, "V only")],
        [("attn_mask", "MASK", None), ("negative_image", "IMAGE", None)],
        ["MODEL", "IMAGE", "MASK"],
    ),
}
#: Socket-only types: inputs of these types have no entry in a workflow's widgets_values.
SOCKET_TYPES = {"MODEL", "IP_ADAPTER", "IMAGE_PROMPT", "CLIP_VISION", "IMAGE", "MASK", "FRAME_WEIGHTS"}
FLOAT_RANGES = {"weight": (-1.0, 5.0), "start_at": (0.0, 1.0), "end_at": (0.0, 1.0), "sharpening": (0.0, 1.0)}


def widget_inputs(node_id: str) -> list[tuple[str, object, object]]:
    """The inputs of `node_id` that appear, in order, in a UI workflow's widgets_values."""
    _, required, optional, _ = NODES[node_id]
    return [i for i in required + optional if not (isinstance(i[1], str) and i[1] in SOCKET_TYPES)]
