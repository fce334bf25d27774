"""Read an IP-Adapter file (`.safetensors` or a tensors-only `.bin` pickle) into its two key groups.

Official files hold `image_proj.*` and `ip_adapter.*`; raw training checkpoints hold `image_proj_model.*`,
`adapter_modules.*` and a frozen `unet.*` copy (ignored); XLabs' FLUX.1 files have their own layout
(`dit/xlabs_format.py`). Pickles are read with `weights_only=True`: a pickle that
asks to build anything but tensors fails before any of its code runs.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .dit.xlabs_format import is_xlabs_layout, xlabs_groups
from .errors import CheckpointFormatError, UnsafeCheckpointError

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
GROUP_PREFIXES = {
    "image_proj.": "image_proj",
    "image_proj_model.": "image_proj",
    "ip_adapter.": "ip_adapter",
    "adapter_modules.": "ip_adapter",
}
IGNORED_PREFIXES = ("unet.",)
#: Key fragments that identify files users put in the wrong folder, with the advice for each.
FOREIGN_SIGNATURES = (
    (("lora_unet_", "lora_te", ".lora_down.", ".lora_A.", "lora_up"), "a LoRA", "load it with a LoRA loader node"),
    (("model.diffusion_model.", "input_blocks.", "down_blocks."), "a UNet or a full checkpoint",
     "load it with a checkpoint or UNet loader node"),
    (("vision_model.", "visual.transformer."), "a CLIP vision encoder", "put it in models/clip_vision"),
    (("double_blocks.", "single_blocks.", "joint_blocks.", "transformer_blocks."), "a FLUX or SD3 diffusion model",
     "load it with the Load Diffusion Model node (models/diffusion_models)"),
)


@dataclass(frozen=True)
class CheckpointGroups:
    """The two key groups of an adapter file, prefixes stripped. Tensors keep the file's dtypes."""

    name: str
    image_proj: dict[str, torch.Tensor]
    ip_adapter: dict[str, torch.Tensor]


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointFormatError(
            f"'{path.name}' could not be read as safetensors ({e}); it is truncated or corrupt "
            f"({os.path.getsize(path)} bytes on disk). Download it again."
        ) from e


def _read_pickle(path: Path) -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"'{path.name}' was refused: it asks to build objects other than tensors, which an IP-Adapter file "
            f"never needs, and nothing in it was run ({str(e).splitlines()[0]}). Use the official file, "
            "preferably its .safetensors version."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointFormatError(
            f"'{path.name}' could not be read ({str(e).splitlines()[0]}); it is truncated or not a torch file "
            f"({os.path.getsize(path)} bytes on disk). Download it again."
        ) from e


def _flatten(obj: dict, name: str, prefix: str = "") -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, name, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value
        else:
            raise CheckpointFormatError(
                f"'{name}': entry '{prefix}{key}' is a {type(value).__name__}, not a tensor; an IP-Adapter file "
                "holds only tensors. Use the official file."
            )
    return flat


def read_flat(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of the file under flat dotted names."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"'{path}' does not exist. Put IP-Adapter files in models/ipadapter.")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        obj = _read_pickle(path)
        if not isinstance(obj, dict):
            raise CheckpointFormatError(f"'{path.name}' holds a {type(obj).__name__}, not a dict of tensors.")
        return _flatten(obj, path.name)
    raise CheckpointFormatError(
        f"'{path.name}' has the extension '{suffix}'; IP-Adapter files are .safetensors or .bin."
    )


def _foreign_error(name: str, keys: list[str]) -> CheckpointFormatError:
    for fragments, what, advice in FOREIGN_SIGNATURES:
        hits = [k for k in keys if any(f in k for f in fragments)]
        if hits:
            return CheckpointFormatError(
                f"'{name}' is not an IP-Adapter: it looks like {what} (keys such as '{hits[0]}'). "
                f"IP-Adapter files have 'image_proj' and 'ip_adapter' keys; {advice}."
            )
    sample = ", ".join(f"'{k}'" for k in keys[:3]) or "none"
    return CheckpointFormatError(
        f"'{name}' is not an IP-Adapter: it has no 'image_proj' / 'ip_adapter' keys (found {sample}). "
        "Download an official IP-Adapter file."
    )


def group_keys(flat: dict[str, torch.Tensor], name: str) -> CheckpointGroups:
    """Split flat keys into the `image_proj` and `ip_adapter` groups; reject anything unknown, naming the key."""
    if is_xlabs_layout(flat):
        return CheckpointGroups(name, *xlabs_groups(flat, name))
    groups: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    unknown, ignored = [], 0
    for key, tensor in flat.items():
        prefix = next((p for p in GROUP_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            groups[GROUP_PREFIXES[prefix]][key[len(prefix) :]] = tensor
        elif key.startswith(IGNORED_PREFIXES):
            ignored += 1
        else:
            unknown.append(key)
    if not groups["image_proj"] or not groups["ip_adapter"]:
        raise _foreign_error(name, unknown or sorted(flat))
    if unknown:
        raise CheckpointFormatError(
            f"'{name}' has {len(unknown)} key(s) outside 'image_proj' / 'ip_adapter', such as '{unknown[0]}'. "
            "Re-export the adapter with only those two groups."
        )
    if ignored:
        log.info("'%s': ignored %d frozen 'unet.*' tensors of a training checkpoint", name, ignored)
    return CheckpointGroups(name, groups["image_proj"], groups["ip_adapter"])


def read_checkpoint(path: str | os.PathLike) -> CheckpointGroups:
    """Read `path` once and return its key groups (file dtypes kept; cast when building the adapter)."""
    return group_keys(read_flat(path), Path(path).name)
