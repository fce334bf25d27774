"""XLabs' FLUX.1 IP-Adapter file layout (flux-ip-adapter v1 / v2), read into the pack's two key groups.

The files hold `ip_adapter_proj_model.{proj,norm}.*` and
`double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}`; the groups use the diffusers names
(`image_proj.proj.weight`, `ip_adapter.{i}.to_k_ip.weight`, ...) so the rest of the pack sees one layout.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from ..errors import CheckpointFormatError

PROJ_PREFIX = "ip_adapter_proj_model."
_LAYER_KEY = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_(k|v)_proj\.(weight|bias)$")


def is_xlabs_layout(keys: Mapping[str, object]) -> bool:
    """Whether a flat key set is XLabs' layout (its projection prefix is unique to it)."""
    return any(key.startswith(PROJ_PREFIX) for key in keys)


Groups = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def xlabs_groups(flat: Mapping[str, torch.Tensor], name: str) -> Groups:
    """Split an XLabs file into (`image_proj`, `ip_adapter`) groups under diffusers names.

    Raises:
        CheckpointFormatError: a key outside the layout (named), or no block weights at all.
    """
    image_proj: dict[str, torch.Tensor] = {}
    layers: dict[str, torch.Tensor] = {}
    for key, tensor in flat.items():
        if key.startswith(PROJ_PREFIX):
            image_proj[key[len(PROJ_PREFIX):]] = tensor
        elif m := _LAYER_KEY.match(key):
            layers[f"{m.group(1)}.to_{m.group(2)}_ip.{m.group(3)}"] = tensor
        else:
            raise CheckpointFormatError(
                f"'{name}' looks like an XLabs FLUX.1 IP-Adapter but has the unexpected key '{key}'. XLabs files "
                "hold only 'ip_adapter_proj_model.*' and 'double_blocks.<i>.processor.ip_adapter_double_stream_*' "
                "keys; download the official file again.")
    if not layers:
        raise CheckpointFormatError(
            f"'{name}' has XLabs' image projection but no 'double_blocks.<i>.processor.*' block weights; the file "
            "is incomplete. Download it again.")
    return image_proj, layers
