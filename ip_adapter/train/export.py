"""Write an adapter in the released flat `.safetensors` format and read it back through the pack's own loader.

Keys: `image_proj.<k>` and `ip_adapter.<2n+1>.to_k_ip.weight` / `.to_v_ip.weight`, what Load IP-Adapter, diffusers
and the other ComfyUI packs read. Official training checkpoints (`unet.*`, `image_proj_model.*`, `adapter_modules.*`)
convert to the same format.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..adapter import IPAdapter
from ..checkpoint import IGNORED_PREFIXES, SAFETENSORS_SUFFIXES, group_keys, read_flat
from ..errors import IPAdapterError, TrainingSetupError
from ..spec import AdapterSpec

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
#: File names accelerate's save_state gives the model weights (newest first).
MODEL_FILES = ("model.safetensors", "pytorch_model.bin")


def write_adapter(tensors: dict[str, torch.Tensor], path: Path, dtype: str = "fp16",
                  metadata: dict[str, str] | None = None) -> AdapterSpec:
    """Save flat official-format `tensors` as `path` (cast to `dtype`), then load it with the pack's loader.

    Returns:
        The spec the loader detects (what Load IP-Adapter will report).
    """
    cast = {k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(cast, str(partial), metadata={"format": "pt", **(metadata or {})})
    os.replace(partial, path)  # a crash mid-write never leaves a truncated adapter behind
    spec = IPAdapter.from_groups(group_keys(read_flat(path), path.name), device="meta").spec
    log.info("wrote %s: %s", path, spec.describe())
    return spec


def model_file(checkpoint: Path) -> Path:
    """The weights file of an accelerate checkpoint folder (or `checkpoint` itself if it is a file)."""
    if checkpoint.is_file():
        return checkpoint
    for name in MODEL_FILES:
        if (checkpoint / name).is_file():
            return checkpoint / name
    raise TrainingSetupError(f"'{checkpoint}' holds no {' or '.join(MODEL_FILES)}; point to a checkpoint-<step> "
                             "folder of a training run (or the weights file itself).")


def _read_trained(source: Path) -> dict[str, torch.Tensor]:
    """The file's tensors without the frozen `unet.*` copy (never read from a .safetensors file: gigabytes)."""
    if source.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return read_flat(source)
    try:
        with safe_open(str(source), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if not k.startswith(IGNORED_PREFIXES)}
    except (SafetensorError, OSError) as e:
        raise TrainingSetupError(f"cannot read '{source}' as safetensors ({e}); it is truncated or corrupt.") from e


def convert_checkpoint(checkpoint: Path, output: Path, dtype: str = "fp16") -> AdapterSpec:
    """Convert a training checkpoint (official scripts' or this trainer's) to the released format.

    The frozen `unet.*` copy is dropped, `image_proj_model.*` becomes `image_proj.*` and `adapter_modules.*` becomes
    `ip_adapter.*` (FaceID LoRA keys included).
    """
    source = model_file(checkpoint)
    try:
        groups = group_keys(_read_trained(source), source.name)
        IPAdapter.from_groups(groups, device="meta")  # refuse anything the loader would refuse, before writing
    except IPAdapterError as e:
        raise TrainingSetupError(f"cannot convert '{source}': {e}") from e
    flat = {f"image_proj.{k}": v for k, v in groups.image_proj.items()}
    flat.update({f"ip_adapter.{k}": v for k, v in groups.ip_adapter.items()})
    return write_adapter(flat, output, dtype, {"converted_from": source.name})
