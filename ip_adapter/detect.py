"""Detect an adapter's kind from tensor shapes and validate its `ip_adapter` layer group.

Rules (checkpoints.md §5.2); the file name is consulted only where two layouts are identical:

- ImageProjModel: "light" if the name contains "light"; "vit-g" for an SD1.5 adapter fed by ViT-bigG; else "base".
- Resampler: "faceid-portrait-unnorm" if its input is 512 wide or the name contains "unnorm"; "plus-face" if the
  name contains "face"; "composition" if it contains "composition"; else "plus".
- ProjPlusModel: "faceid-plusv2" (shortcut on) if the name contains "plusv2"; else "faceid-plus".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from .dit.detect import detect_dit
from .errors import CheckpointFormatError
from .layout import LAYOUT_BY_LAYER_COUNT, SD15_LAYOUT, SDXL_LAYOUT, BaseFamily
from .spec import CLIP_TOKENS, FACE_ID_DIM, AdapterSpec, ClipOutput, ProjectionType
from .statedict import StateDict, shape_of
from .weights import LORA_KEY as _LORA_KEY

_IP_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_KNOWN_CROSS_DIMS = {SD15_LAYOUT.cross_attention_dim: BaseFamily.SD15, SDXL_LAYOUT.cross_attention_dim: BaseFamily.SDXL}
_LISTED = 8  # indices listed in a message before it abbreviates


@dataclass(frozen=True)
class LayerGroup:
    """The validated `ip_adapter` group: odd indices with to_k_ip/to_v_ip, and the FaceID LoRA rank (0 if none)."""

    indices: tuple[int, ...]
    cross_attention_dim: int
    lora_rank: int


def _fail(name: str, problem: str, fix: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"'{name}': {problem}. {fix}")


def _ip_indices(ad: StateDict, name: str) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for key in ad:
        if m := _IP_KEY.match(key):
            found.setdefault(int(m.group(1)), set()).add(m.group(2))
        elif not _LORA_KEY.match(key):
            raise _fail(name, f"unexpected key 'ip_adapter.{key}' in the layer group",
                        "Only '<n>.to_k_ip.weight', '<n>.to_v_ip.weight' and FaceID LoRA keys belong there; "
                        "re-export the adapter or use an official file")
    return found


def _listing(values: list[int]) -> str:
    """A short list for messages: every value, or the first and last few."""
    if not values:
        return "none"
    if len(values) <= _LISTED:
        return str(values)
    return "[" + ", ".join(map(str, values[:_LISTED // 2])) + ", ..., " + ", ".join(map(str, values[-2:])) + "]"


def _check_layer_count(indices: list[int], name: str) -> None:
    """Accept n layers at the odd indices 1, 3, ..., 2n-1 without gaps: 16 (SD1.5), 70 (SDXL) or any other count (a
    custom layout, e.g. an adapter trained for a pruned or distilled UNet; it is checked against the model at Apply).
    """
    if not indices:
        raise _fail(name, "its 'ip_adapter' group has no cross-attention layers (no '<n>.to_k_ip.weight' keys)",
                    "The file is incomplete or not an IP-Adapter; download it again")
    if indices == list(range(1, 2 * len(indices), 2)):
        return
    expected = list(range(1, max(*indices, 1) + 1, 2))  # the gap-free run up to the highest index found
    missing, extra = sorted(set(expected) - set(indices)), sorted(set(indices) - set(expected))
    raise _fail(name, f"the layer group has {len(indices)} cross-attention layers at indices {_listing(indices)}, "
                f"but an adapter's layers sit at the odd indices 1, 3, 5, ... without gaps (up to index "
                f"{expected[-1]}, {len(expected)} layers): missing {_listing(missing)}, extra {_listing(extra)}. "
                f"SD1.5 adapters have {SD15_LAYOUT.num_layers} layers, SDXL adapters {SDXL_LAYOUT.num_layers} and "
                "adapters trained for a pruned UNet that UNet's count",
                "The file is incomplete or damaged; download or export it again")


def validate_layers(ad: StateDict, name: str) -> LayerGroup:
    """Check the `ip_adapter` group's keys and shapes; raise CheckpointFormatError naming what is wrong."""
    found = _ip_indices(ad, name)
    indices = sorted(found)
    for index in indices:
        if found[index] != {"to_k_ip", "to_v_ip"}:
            missing = {"to_k_ip", "to_v_ip"} - found[index]
            raise _fail(name, f"layer {index} lacks {sorted(missing)}", "The file is incomplete; download it again")
    _check_layer_count(indices, name)
    cross_dims = {shape_of(ad, f"{i}.{p}.weight")[1] for i in indices for p in ("to_k_ip", "to_v_ip")}
    if len(cross_dims) != 1:
        raise _fail(name, f"its layers disagree on the context width ({sorted(cross_dims)})", "The file is corrupt")
    for index in indices:
        if shape_of(ad, f"{index}.to_k_ip.weight") != shape_of(ad, f"{index}.to_v_ip.weight"):
            raise _fail(name, f"layer {index} has to_k_ip and to_v_ip of different shapes", "The file is corrupt")
    return LayerGroup(tuple(indices), cross_dims.pop(), _lora_rank(ad, name))


def _lora_rank(ad: StateDict, name: str) -> int:
    """The FaceID LoRA rank (0 without LoRA); every `down` needs its `up` of the same rank and the reverse."""
    pairs = {(m.group(1), m.group(2)) for key in ad if (m := _LORA_KEY.match(key))}
    ranks = set()
    for index, module in sorted(pairs):
        down, up = f"{index}.{module}.down.weight", f"{index}.{module}.up.weight"
        for key in (down, up):
            if key not in ad:
                raise _fail(name, f"the FaceID LoRA lacks key 'ip_adapter.{key}'", "The file is incomplete; "
                            "download it again")
        if shape_of(ad, down)[0] != shape_of(ad, up)[1]:
            raise _fail(name, f"the FaceID LoRA pair {index}.{module} has mismatched ranks", "The file is corrupt")
        ranks.add(shape_of(ad, down)[0])
    return max(ranks, default=0)


def _family(group: LayerGroup) -> tuple[BaseFamily, bool]:
    """The base family and whether the layers are a custom layout.

    A known context width (768 SD1.5, 2048 SDXL) decides the family; the layout is standard when the count is that
    family's (16 / 70) and custom otherwise, e.g. 16 layers at width 2048 from a pruned SDXL UNet. An unknown width
    (tiny test models, other bases) takes the family from a standard count, else SD1.5 with a custom layout. Apply
    matches custom layouts to the model's own cross-attention layers.
    """
    known = _KNOWN_CROSS_DIMS.get(group.cross_attention_dim)
    standard = LAYOUT_BY_LAYER_COUNT.get(len(group.indices))
    if known is None:
        return (standard.family, False) if standard else (BaseFamily.SD15, True)
    return known, standard is None or standard.family is not known


def _projection_type(ip: StateDict, name: str) -> ProjectionType:
    if "perceiver_resampler.proj_in.weight" in ip:
        return ProjectionType.FACEID_PLUS
    if "latents" in ip:
        return ProjectionType.RESAMPLER
    if "proj.3.weight" in ip:
        return ProjectionType.MLP
    if "proj.0.weight" in ip and "norm.weight" in ip:
        return ProjectionType.FACEID_MLP
    if "proj.weight" in ip and "norm.weight" in ip:
        return ProjectionType.IMAGE_PROJ
    keys = sorted(ip)[:4]
    raise _fail(name, f"unknown image projection layout (image_proj keys {keys}...)",
                "Supported: ImageProjModel, Resampler (Plus), MLPProjModel (full face) and the FaceID projections")


def _has(name: str, word: str) -> bool:
    return word in PurePath(name).name.lower()


def _image_proj_fields(ip: StateDict, name: str, family: BaseFamily) -> dict:
    rows, width = shape_of(ip, "proj.weight")
    vit_g = family is BaseFamily.SD15 and width == 1280
    kind = "light" if _has(name, "light") else "vit-g" if vit_g else "base"
    tokens = rows // shape_of(ip, "norm.weight")[0]
    return dict(kind=kind, clip_output=ClipOutput.IMAGE_EMBEDS, clip_width=width, num_tokens=tokens)


def _resampler_fields(ip: StateDict, name: str, family: BaseFamily) -> dict:
    width, tokens = shape_of(ip, "proj_in.weight")[1], shape_of(ip, "latents")[1]
    if width == FACE_ID_DIM or _has(name, "unnorm"):
        return dict(kind="faceid-portrait-unnorm", clip_output=None, clip_width=0, face_id_dim=width,
                    num_tokens=tokens)
    kind = "plus-face" if _has(name, "face") else "composition" if _has(name, "composition") else "plus"
    return dict(kind=kind, clip_output=ClipOutput.HIDDEN_STATES, clip_width=width, num_tokens=tokens)


def _mlp_fields(ip: StateDict, name: str, family: BaseFamily) -> dict:
    width = shape_of(ip, "proj.0.weight")[1]
    return dict(kind="full-face", clip_output=ClipOutput.HIDDEN_STATES, clip_width=width, num_tokens=CLIP_TOKENS)


def _faceid_fields(ip: StateDict, name: str, family: BaseFamily) -> dict:
    tokens = shape_of(ip, "proj.2.weight")[0] // shape_of(ip, "norm.weight")[0]
    kind = "faceid-portrait" if tokens > 4 else "faceid"
    return dict(kind=kind, clip_output=None, clip_width=0, face_id_dim=shape_of(ip, "proj.0.weight")[1],
                num_tokens=tokens)


def _faceid_plus_fields(ip: StateDict, name: str, family: BaseFamily) -> dict:
    v2 = _has(name, "plusv2")
    return dict(kind="faceid-plusv2" if v2 else "faceid-plus", clip_output=ClipOutput.HIDDEN_STATES,
                clip_width=shape_of(ip, "perceiver_resampler.proj_in.weight")[1],
                face_id_dim=shape_of(ip, "proj.0.weight")[1],
                num_tokens=shape_of(ip, "proj.2.weight")[0] // shape_of(ip, "norm.weight")[0], shortcut=v2)


_FIELDS = {
    ProjectionType.IMAGE_PROJ: _image_proj_fields,
    ProjectionType.RESAMPLER: _resampler_fields,
    ProjectionType.MLP: _mlp_fields,
    ProjectionType.FACEID_MLP: _faceid_fields,
    ProjectionType.FACEID_PLUS: _faceid_plus_fields,
}


def detect(image_proj: StateDict, ip_adapter: StateDict, name: str) -> AdapterSpec:
    """Describe an adapter from its two key groups. `name` is the file name (used in messages and for the
    layout-identical variants listed in this module's docstring). DiT adapters (FLUX.1, SD3.5) are described by
    `dit.detect.detect_dit`, whose key layouts never occur in UNet adapters."""
    dit = detect_dit(image_proj, ip_adapter, name)
    if dit is not None:
        return dit
    group = validate_layers(ip_adapter, name)
    family, custom = _family(group)
    projection = _projection_type(image_proj, name)
    try:
        fields = _FIELDS[projection](image_proj, name, family)
    except KeyError as e:
        raise _fail(name, f"the {projection.value} projection lacks key 'image_proj.{e.args[0]}'",
                    "The file is incomplete; download it again") from e
    fields.setdefault("face_id_dim", 0)
    return AdapterSpec(family=family, projection=projection, num_layers=len(group.indices),
                       cross_attention_dim=group.cross_attention_dim, lora_rank=group.lora_rank,
                       custom_layout=custom, **fields)
