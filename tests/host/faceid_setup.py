"""Shared setup of the FaceID host tests: the stand-in InsightFace pack in the host's insightface folder, tiny
official-format FaceID adapters for the tiny host UNets (fan-in scaled, with the LoRA at every processor), the pack's
FaceID nodes, and the official pipeline as the reference (InsightFace called directly, the CLIP twin, diffusers with
the LoRA fused into the UNet twin)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tests.diffusers_reference import attn2_widths, load_diffusers_adapters
from tests.faceid_standins import build_pack
from tests.factories import Shapes, faceid_shapes, layer_shapes, lora_shapes, resampler_shapes
from tests.host.tiny_models import TinyClipVision, TinyUNet

FACE_ID = 512
LORA_RANK = 4
STANDIN = "standin"
GATED = "standin_gated"
#: The stand-in detector with this gate finds faces only at detection sizes below it (448 and smaller).
GATE = 460.0
#: FaceID MLP hidden width (official: 2 x 512); the Plus projection needs it (diffusers fixes its ratio at 2).
ID_HIDDEN = 2 * FACE_ID
#: A small resampler stands in for the unnorm portrait's (1280 wide, 20 heads); diffusers reads heads from to_q / 64.
UNNORM_DIM, UNNORM_HEADS, PORTRAIT_TOKENS = 64, 1, 16
#: kind -> official file name pattern ({family} = sd15 / sdxl)
FILE_NAMES = {
    "faceid": "ip-adapter-faceid_{family}.bin",
    "faceid-plusv2": "ip-adapter-faceid-plusv2_{family}.bin",
    "faceid-portrait": "ip-adapter-faceid-portrait-v11_{family}.bin",
    "faceid-portrait-unnorm": "ip-adapter-faceid-portrait_{family}_unnorm.bin",
}
WITH_LORA = {"faceid", "faceid-plusv2"}


def standin_pack(host_models: Any, name: str = STANDIN, gate: float | None = None) -> str:
    """The stand-in pack as `models/insightface/models/<name>` of the host; returns the pack name."""
    build_pack(host_models.folder("insightface") / "models" / name, gate=gate)
    return name


#: diffusers' FaceID Plus projection has 4 perceiver blocks (it does not read the depth from the weights).
OFFICIAL_DEPTH = 4


def _faceid_plus_shapes(cross: int, clip_hidden: int, depth: int) -> Shapes:
    shapes = faceid_shapes(cross, 4)
    perceiver = resampler_shapes(cross, cross // 64, 0, clip_hidden, cross, depth=depth, latents=False)
    shapes.update({f"perceiver_resampler.{k}": v for k, v in perceiver.items()})
    return shapes


def image_proj_shapes_for(kind: str, cross: int, clip: TinyClipVision, depth: int = OFFICIAL_DEPTH) -> Shapes:
    """`image_proj` shapes of a FaceID kind for the tiny models; `depth` sets the Plus perceiver's blocks (the pack
    reads it from the weights; fewer blocks make a much smaller file when no diffusers comparison is made)."""
    table = {
        "faceid": lambda: faceid_shapes(cross, 4),
        "faceid-plusv2": lambda: _faceid_plus_shapes(cross, clip.config["hidden_size"], depth),
        "faceid-portrait": lambda: faceid_shapes(cross, PORTRAIT_TOKENS),
        "faceid-portrait-unnorm": lambda: resampler_shapes(UNNORM_DIM, UNNORM_HEADS, PORTRAIT_TOKENS, FACE_ID, cross),
    }
    return table[kind]()


def fan_in_tensors(shapes: Shapes, seed: int) -> dict[str, torch.Tensor]:
    """Matrices with std 1/sqrt(fan_in) (LoRA `up` included: its fan-in is the rank), LayerNorm weights near 1,
    small biases: every activation stays O(1), so float32 rounding stays far below the parity tolerance."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in sorted(shapes.items()):
        t = torch.randn(shape, generator=generator)
        if len(shape) >= 2:
            out[key] = t / shape[-1] ** 0.5
        elif key.endswith("weight"):
            out[key] = 1.0 + 0.1 * t
        else:
            out[key] = 0.1 * t
    return out


def faceid_groups(kind: str, unet: TinyUNet, clip: TinyClipVision, seed: int = 0,
                  depth: int = OFFICIAL_DEPTH) -> dict[str, dict]:
    """An official-format FaceID checkpoint sized for `unet` (LoRA of rank 4 at every processor for FaceID / Plus)."""
    widths, cross = attn2_widths(unet.diffusers), unet.context_dim
    ad = layer_shapes(widths, cross)
    if kind in WITH_LORA:
        ad.update(lora_shapes(widths, cross, rank=LORA_RANK))
    return {"image_proj": fan_in_tensors(image_proj_shapes_for(kind, cross, clip, depth), seed),
            "ip_adapter": fan_in_tensors(ad, seed + 1)}


def write_faceid_adapter(host_models: Any, groups: dict, kind: str, family: str, tag: str = "") -> str:
    """The adapter under its official file name (the name tells Plus v2 and unnorm apart), as a .bin."""
    name = FILE_NAMES[kind].format(family=family)
    if tag:
        name = f"{tag}/{name}"
    return host_models.write("ipadapter", name, groups)


@dataclass
class FaceNodes:
    """The pack's nodes the FaceID tests drive, and its core package (error types)."""

    load_insightface: Any
    encode_face: Any
    apply_faceid: Any
    load: Any
    encode: Any
    apply: Any
    core: Any
    module: Any

    @classmethod
    def of(cls, host_pack: Any) -> FaceNodes:
        m = host_pack.node_class_mappings
        return cls(m["LoadInsightFace"](), m["EncodeFacePrompt"](), m["ApplyIPAdapterFaceID"](), m["LoadIPAdapter"](),
                   m["EncodeImagePrompt"](), m["ApplyIPAdapter"](), host_pack.module.ip_adapter, host_pack.module)


def apply_faceid(nodes: FaceNodes, model: Any, adapter: Any, prompt: Any, weight: float = 1.0, s_scale: float = 1.0,
                 lora: float = 0.0, combine: str = "concat", weight_type: str = "linear") -> Any:
    with torch.inference_mode():
        return nodes.apply_faceid.apply(model, adapter, prompt, weight, s_scale, lora, weight_type, combine, 0.0, 1.0,
                                        "V only")[0]


def encode_faces(nodes: FaceNodes, analysis: Any, images: torch.Tensor, clip: Any = None, no_face: str = "error"):
    with torch.inference_mode():
        return nodes.encode_face.encode(analysis, images, no_face, clip)


_LORA_TARGETS = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}


def fuse_lora_(twin: torch.nn.Module, groups: dict, strength: float) -> dict[str, torch.Tensor]:
    """The official FaceID LoRA math on the diffusers twin: W += strength * up @ down on every processor's
    to_q / to_k / to_v / to_out.0, found with diffusers' own key naming (`_load_ip_adapter_loras`).

    Returns:
        The original weights of the modules it changed, by module name (to restore them).
    """
    lora = twin._load_ip_adapter_loras([groups])[0]
    originals = {}
    with torch.no_grad():
        for key, down in lora.items():
            if not key.endswith("_lora.down.weight"):
                continue
            processor, module = key[len("unet."):].removesuffix(".down.weight").rsplit(".", 1)
            name = f"{processor.removesuffix('.processor')}.{_LORA_TARGETS[module]}"
            layer = twin.get_submodule(name)
            originals[name] = layer.weight.detach().clone()
            up = lora[key.replace(".down.weight", ".up.weight")]
            layer.weight += strength * (up.double() @ down.double()).to(layer.weight.dtype)
    return originals


@contextmanager
def diffusers_reference(unet: TinyUNet, groups: dict, weight: float, lora_strength: float
                        ) -> Iterator[torch.nn.Module]:
    """The session's diffusers twin with the adapter loaded by diffusers at scale `weight` and its LoRA fused, put
    back exactly as it was afterwards (copying the twin instead would cost ~1 GB for SDXL)."""
    twin = unet.diffusers
    processors = dict(twin.attn_processors)
    originals = fuse_lora_(twin, groups, lora_strength) if lora_strength else {}
    try:
        load_diffusers_adapters(twin, [groups], [weight])
        yield twin
    finally:
        twin.encoder_hid_proj = None  # first: a Plus projection has attention processors of its own
        twin.config.encoder_hid_dim_type = None
        twin.set_attn_processor(processors)
        with torch.no_grad():
            for name, weight_ in originals.items():
                twin.get_submodule(name).weight.copy_(weight_)


@dataclass(frozen=True)
class OfficialFaces:
    """What the official pipeline feeds diffusers for N face photos.

    Attributes:
        ids: InsightFace `normed_embedding` (or `embedding` for unnorm) of faces[0]. Shape: (N, 512).
        crops: `norm_crop(image, faces[0].kps, 224)` as IMAGE. Shape: (N, 224, 224, 3).
    """

    ids: torch.Tensor
    crops: torch.Tensor


def official_faces(pack_root: Path, pack: str, images: torch.Tensor, normed: bool = True) -> OfficialFaces:
    """InsightFace called as the official FaceID scripts call it: FaceAnalysis(name, root), prepare(det_size 640),
    `get` on the BGR image, faces[0]."""
    import numpy as np
    from insightface.app import FaceAnalysis
    from insightface.utils import face_align

    app = FaceAnalysis(name=pack, root=str(pack_root), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(640, 640))
    ids, crops = [], []
    for image in images:
        bgr = (image * 255).round().to(torch.uint8).numpy()[..., ::-1].copy()
        face = app.get(bgr)[0]
        ids.append(torch.from_numpy(np.asarray(face.normed_embedding if normed else face.embedding)))
        crop = face_align.norm_crop(bgr, landmark=face.kps, image_size=224)
        crops.append(torch.from_numpy(crop[..., ::-1].copy()).float() / 255.0)
    return OfficialFaces(torch.stack(ids).float(), torch.stack(crops))


def twin_crop_hidden(clip: TinyClipVision, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP hidden_states[-2] of the crops (transformers twin) and of an all-zero normalised pixel tensor."""
    import comfy.clip_vision

    pixels = comfy.clip_vision.clip_preprocess(crops, size=clip.config["image_size"]).float()
    with torch.no_grad():
        hidden = clip.transformers(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        zero = clip.transformers(pixel_values=torch.zeros_like(pixels[:1]), output_hidden_states=True)
    return hidden, zero.hidden_states[-2]

