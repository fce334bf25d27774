"""The public node contract (../shared/reference/node-contract.md) as data, for tests of nodes and workflows."""

from __future__ import annotations

WEIGHT_TYPES = [
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
    "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
    "style transfer precise", "composition precise",
]
COMBINE = ["concat", "add", "subtract", "average", "norm average"]
EMBEDS_SCALING = ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]

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
    "LoadInsightFace": (
        "Load InsightFace",
        [("model_name", "COMBO", None), ("provider", ["CPU", "CUDA", "ROCM", "CoreML", "DirectML", "OpenVINO"], "CPU")],
        [],
        ["FACE_ANALYSIS"],
    ),
    "EncodeFacePrompt": (
        "Encode Face Prompt",
        [("face_analysis", "FACE_ANALYSIS", None), ("image", "IMAGE", None), ("no_face", ["error", "skip"], "error")],
        [("clip_vision", "CLIP_VISION", None)],
        ["IMAGE_PROMPT", "IMAGE"],
    ),
    "ApplyIPAdapterFaceID": (
        "Apply IP-Adapter FaceID",
        [("model", "MODEL", None), ("ipadapter", "IP_ADAPTER", None), ("face_prompt", "IMAGE_PROMPT", None),
         ("weight", "FLOAT", 1.0), ("weight_faceidv2", "FLOAT", 1.0), ("lora_strength", "FLOAT", 0.6),
         ("weight_type", WEIGHT_TYPES, "linear"), ("combine_images", COMBINE, "concat"), ("start_at", "FLOAT", 0.0),
         ("end_at", "FLOAT", 1.0), ("embeds_scaling", EMBEDS_SCALING, "V only")],
        [("attn_mask", "MASK", None)],
        ["MODEL"],
    ),
}
#: Socket-only types: inputs of these types have no entry in a workflow's widgets_values.
SOCKET_TYPES = {"MODEL", "IP_ADAPTER", "IMAGE_PROMPT", "CLIP_VISION", "IMAGE", "MASK", "FACE_ANALYSIS"}
FLOAT_RANGES = {"weight": (-1.0, 5.0), "start_at": (0.0, 1.0), "end_at": (0.0, 1.0), "weight_faceidv2": (-1.0, 5.0),
                "lora_strength": (0.0, 2.0)}
#: Node types that live only in the frontend (never executed, left out of API prompts).
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def widget_inputs(node_id: str) -> list[tuple[str, object, object]]:
    """The inputs of `node_id` that appear, in order, in a UI workflow's widgets_values."""
    _, required, optional, _ = NODES[node_id]
    return [i for i in required + optional if not (isinstance(i[1], str) and i[1] in SOCKET_TYPES)]
