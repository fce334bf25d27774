"""The public node contract (../shared/reference/node-contract.md) as data, for tests of nodes and workflows."""

from __future__ import annotations

WEIGHT_TYPES = [
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
    "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
    "style transfer precise", "composition precise",
]
COMBINE = ["concat", "add", "subtract", "average", "norm average"]
PROMPT_COMBINE = COMBINE + ["max", "min"]
CROP = ["center", "none", "top", "bottom", "left", "right", "pad"]
PRESETS = ["standard", "light", "plus", "plus face", "full face", "vit-G", "composition",
           "faceid", "faceid plus", "faceid plus v2", "faceid portrait", "faceid portrait unnorm"]
NOISE = ["fade", "dissolve", "gaussian", "shuffle"]
EMBEDS_SCALING = ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]
TIMINGS = ["linear", "ease in", "ease out", "ease in-out", "custom", "random"]

#: node id -> (display name, required inputs [(name, type or combo list, default)], optional inputs, outputs)
NODES = {
    "LoadIPAdapter": ("Load IP-Adapter", [("ipadapter_file", "COMBO", None)], [], ["IP_ADAPTER"]),
    "EncodeImagePrompt": (
        "Encode Image Prompt",
        [("clip_vision", "CLIP_VISION", None), ("image", "IMAGE", None), ("crop", CROP, "center")],
        [("negative_image", "IMAGE", None), ("sharpening", "FLOAT", 0.0), ("batch_size", "INT", 0)],
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
    "LoadIPAdapterPreset": ("Load IP-Adapter Preset", [("model", "MODEL", None), ("preset", PRESETS, "standard")], [],
                            ["IP_ADAPTER", "CLIP_VISION"]),
    "NegativeImageNoise": (
        "Negative Image Noise",
        [("type", NOISE, "fade"), ("strength", "FLOAT", 1.0), ("blur", "INT", 0), ("seed", "INT", 0)],
        [("image", "IMAGE", None)],
        ["IMAGE"],
    ),
    "CombineImagePrompts": (
        "Combine Image Prompts",
        [("image_prompt_1", "IMAGE_PROMPT", None), ("weight_1", "FLOAT", 1.0), ("method", PROMPT_COMBINE, "concat")],
        [item for i in (2, 3, 4) for item in ((f"image_prompt_{i}", "IMAGE_PROMPT", None),
                                               (f"weight_{i}", "FLOAT", 1.0))],
        ["IMAGE_PROMPT"],
    ),
    "SaveImagePrompt": ("Save Image Prompt", [("image_prompt", "IMAGE_PROMPT", None),
                                              ("filename_prefix", "STRING", "image_prompts/ip")], [], []),
    "LoadImagePrompt": ("Load Image Prompt", [("image_prompt_file", "COMBO", None)], [], ["IMAGE_PROMPT"]),
    "ApplyIPAdapterStyleComposition": (
        "Apply IP-Adapter Style & Composition",
        [("model", "MODEL", None), ("ipadapter", "IP_ADAPTER", None), ("style_prompt", "IMAGE_PROMPT", None),
         ("composition_prompt", "IMAGE_PROMPT", None), ("weight_style", "FLOAT", 1.0),
         ("weight_composition", "FLOAT", 1.0), ("expand_style", "BOOLEAN", False),
         ("combine_images", COMBINE, "concat"),
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
SOCKET_TYPES = {"MODEL", "IP_ADAPTER", "IMAGE_PROMPT", "CLIP_VISION", "IMAGE", "MASK", "FACE_ANALYSIS", "FRAME_WEIGHTS"}
FLOAT_RANGES = {"weight": (-1.0, 5.0), "start_at": (0.0, 1.0), "end_at": (0.0, 1.0), "strength": (0.0, 1.0),
                "sharpening": (0.0, 1.0), "weight_style": (-1.0, 5.0), "weight_composition": (-1.0, 5.0),
                "weight_faceidv2": (-1.0, 5.0), "lora_strength": (0.0, 2.0),
                **{f"weight_{i}": (-1.0, 5.0) for i in range(1, 5)}}
#: Widgets with a control_after_generate value after theirs in widgets_values (the frontend adds one to every INT
#: named seed or noise_seed).
CONTROL_AFTER_GENERATE = {"seed", "noise_seed"}
#: Node types that live only in the frontend (never executed, left out of API prompts).
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def widget_inputs(node_id: str) -> list[tuple[str, object, object]]:
    """The inputs of `node_id` that appear, in order, in a UI workflow's widgets_values."""
    _, required, optional, _ = NODES[node_id]
    return [i for i in required + optional if not (isinstance(i[1], str) and i[1] in SOCKET_TYPES)]


def widget_values(node_id: str, values: list) -> dict[str, object]:
    """A node's widgets_values by input name, without the UI-only control_after_generate entries."""
    values = list(values)
    named = {}
    for name, _, _ in widget_inputs(node_id):
        named[name] = values.pop(0)
        if name in CONTROL_AFTER_GENERATE:
            values.pop(0)
    return named
