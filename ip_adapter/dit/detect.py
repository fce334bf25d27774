"""Detect DiT adapters from their two key groups: XLabs' FLUX.1 adapters and InstantX's SD3.5-Large adapter.

The key layouts never occur in UNet adapters (those carry `to_k_ip` only at odd indices, without biases), so
`detect_dit` answers None for every UNet file and the UNet detection runs unchanged. Rules:

- XLabs: `ip_adapter` holds `{i}.to_{k,v}_ip.{weight,bias}` for blocks 0..n-1 (diffusers names, see
  `xlabs_format.py`) and `image_proj` an ImageProjModel; 4 tokens = "xlabs-v1", 16 = "xlabs-v2".
- InstantX SD3.5: `ip_adapter` holds `{i}.norm_ip.linear.*`, `to_{k,v}_ip`, `norm_q/k/ip_k` for blocks 0..n-1 and
  `image_proj` the timestep-aware resampler.
- InstantX FLUX.1 (`{i}.to_k_ip.weight` from index 0, no bias) is recognised and refused with an explanation.
"""

from __future__ import annotations

import re

from ..errors import CheckpointFormatError
from ..layout import BaseFamily
from ..spec import AdapterSpec, ClipOutput, ProjectionType
from ..statedict import StateDict, shape_of
from .joint import LAYER_KEYS as JOINT_LAYER_KEYS
from .layout import FLUX_LAYOUT

XLABS_LAYER_KEYS = ("to_k_ip.weight", "to_k_ip.bias", "to_v_ip.weight", "to_v_ip.bias")
XLABS_PROJ_KEYS = frozenset({"proj.weight", "proj.bias", "norm.weight", "norm.bias"})
XLABS_KINDS = {4: "xlabs-v1", 16: "xlabs-v2"}
TIME_RESAMPLER_KEYS = ("latents", "proj_in.weight", "proj_out.weight", "norm_out.weight",
                       "time_embedding.linear_1.weight", "layers.0.0.to_q.weight")
_INDEXED = re.compile(r"^(\d+)\.(.+)$")


def _fail(name: str, problem: str, fix: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"'{name}': {problem}. {fix}")


def _blocks(ip: StateDict, expected: tuple[str, ...], name: str, family: str) -> int:
    """Check that `ip` holds exactly `expected` for blocks 0..n-1 and return n."""
    found: dict[int, set[str]] = {}
    for key in ip:
        m = _INDEXED.match(key)
        if m is None or m.group(2) not in expected:
            raise _fail(name, f"unexpected key 'ip_adapter.{key}' in a {family} adapter",
                        f"Its blocks hold only {', '.join(expected)}; download the official file again")
        found.setdefault(int(m.group(1)), set()).add(m.group(2))
    if sorted(found) != list(range(len(found))):
        raise _fail(name, f"its block indices are not 0..{len(found) - 1} ({sorted(found)[:4]}...)",
                    "The file is incomplete; download it again")
    for index, keys in sorted(found.items()):
        if keys != set(expected):
            raise _fail(name, f"block {index} lacks {sorted(set(expected) - keys)}",
                        "The file is incomplete; download it again")
    return len(found)


def _same_shapes(ip: StateDict, count: int, keys: tuple[str, ...], name: str) -> None:
    for key in keys:
        shapes = {shape_of(ip, f"{i}.{key}") for i in range(count)}
        if len(shapes) != 1:
            raise _fail(name, f"its blocks disagree on the shape of '{key}' ({sorted(shapes)})", "The file is corrupt")


def _xlabs(image_proj: StateDict, ip: StateDict, name: str) -> AdapterSpec:
    count = _blocks(ip, XLABS_LAYER_KEYS, name, "FLUX.1 (XLabs)")
    _same_shapes(ip, count, XLABS_LAYER_KEYS, name)
    if set(image_proj) != XLABS_PROJ_KEYS:
        raise _fail(name, f"its image projection has keys {sorted(image_proj)}",
                    f"XLabs adapters have {sorted(XLABS_PROJ_KEYS)}; download the official file again")
    rows, clip_width = shape_of(image_proj, "proj.weight")
    token_width = shape_of(image_proj, "norm.weight")[0]
    if shape_of(ip, "0.to_k_ip.weight")[1] != token_width or rows % token_width:
        raise _fail(name, f"its projection makes {rows / token_width:g} tokens of width {token_width} but its "
                    f"blocks read tokens of width {shape_of(ip, '0.to_k_ip.weight')[1]}", "The file is corrupt")
    tokens = rows // token_width
    return AdapterSpec(kind=XLABS_KINDS.get(tokens, "xlabs"), family=BaseFamily.FLUX,
                       projection=ProjectionType.IMAGE_PROJ, clip_output=ClipOutput.IMAGE_EMBEDS,
                       clip_width=clip_width, face_id_dim=0, num_tokens=tokens, num_layers=count,
                       cross_attention_dim=token_width)


def _instantx_sd35(image_proj: StateDict, ip: StateDict, name: str) -> AdapterSpec:
    count = _blocks(ip, JOINT_LAYER_KEYS, name, "SD3.5 (InstantX)")
    _same_shapes(ip, count, JOINT_LAYER_KEYS, name)
    missing = [k for k in TIME_RESAMPLER_KEYS if k not in image_proj]
    if missing:
        raise _fail(name, f"its image projection lacks 'image_proj.{missing[0]}' (InstantX's timestep-aware "
                    "resampler)", "The file is incomplete; download it again")
    token_width = shape_of(ip, "0.to_k_ip.weight")[1]
    if shape_of(image_proj, "proj_out.weight")[0] != token_width:
        raise _fail(name, f"its resampler makes tokens of width {shape_of(image_proj, 'proj_out.weight')[0]} but "
                    f"its blocks read width {token_width}", "The file is corrupt")
    return AdapterSpec(kind="instantx", family=BaseFamily.SD35_LARGE, projection=ProjectionType.TIME_RESAMPLER,
                       clip_output=ClipOutput.HIDDEN_STATES, clip_width=shape_of(image_proj, "proj_in.weight")[1],
                       face_id_dim=0, num_tokens=shape_of(image_proj, "latents")[1], num_layers=count,
                       cross_attention_dim=token_width)


def _instantx_flux(name: str, ip: StateDict) -> CheckpointFormatError:
    count = len({k.split(".", 1)[0] for k in ip})
    return _fail(name, f"this is InstantX's FLUX.1-dev IP-Adapter ({count} blocks without biases), which this pack "
                 "does not support yet: its reference implementation is not pinned (no diffusers support, and the "
                 "published code disagrees on whether values are normalised)",
                 f"For FLUX.1 use XLabs' flux-ip-adapter v1 or v2 (ip_adapter.safetensors, {FLUX_LAYOUT.encoder} "
                 "encoder), or the core Flux Redux nodes")


def detect_dit(image_proj: StateDict, ip_adapter: StateDict, name: str) -> AdapterSpec | None:
    """The spec of a DiT adapter, or None when the groups have no DiT key layout (a UNet adapter).

    Raises:
        CheckpointFormatError: a DiT layout that is incomplete or inconsistent, or InstantX's FLUX.1 adapter.
    """
    if "0.norm_ip.linear.weight" in ip_adapter:
        return _instantx_sd35(image_proj, ip_adapter, name)
    if "0.to_k_ip.bias" in ip_adapter:
        return _xlabs(image_proj, ip_adapter, name)
    if "0.to_k_ip.weight" in ip_adapter:  # UNet adapters have to_k_ip at odd indices only
        raise _instantx_flux(name, ip_adapter)
    return None

