"""The `IP_ADAPTER` value: a loaded adapter plus the host ModelPatcher that loads and offloads its weights."""

from __future__ import annotations

import hashlib
import os
import weakref
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import torch

from ..ip_adapter import IPAdapter, load_ip_adapter

FINGERPRINT_BLOCKS = 16
FINGERPRINT_BLOCK_SIZE = 4096


class _ManagedWeights(torch.nn.Module):
    """Holder the host's ModelPatcher manages (it sets bookkeeping attributes such as `device` on its model)."""

    def __init__(self, adapter: IPAdapter) -> None:
        super().__init__()
        self.adapter = adapter


@dataclass(eq=False)
class LoadedAdapter:
    """What flows through `IP_ADAPTER` sockets. Shared, never mutated: clones of a model refer to the same one."""

    adapter: IPAdapter
    patcher: comfy.model_patcher.ModelPatcher
    path: str

    @property
    def name(self) -> str:
        return self.adapter.name

    def __deepcopy__(self, memo: dict) -> LoadedAdapter:
        return self  # weights are immutable; the host's clone() must not copy them


_CACHE: weakref.WeakValueDictionary[tuple, LoadedAdapter] = weakref.WeakValueDictionary()


def project(loaded: LoadedAdapter, **inputs: torch.Tensor | float | None) -> torch.Tensor:
    """`IPAdapter.project` where the host loads the adapter (its load device, in that device's compute dtype)."""
    mm.load_models_gpu([loaded.patcher])
    with torch.no_grad():
        return loaded.adapter.project(device=loaded.patcher.load_device, **inputs)


def file_identity(path: str) -> tuple:
    """What tells two versions of a file apart without reading it all: path, inode, size, modification and change
    times (a replaced file gets a new change time even when its size and modification time are restored), and a
    digest of FINGERPRINT_BLOCKS small blocks spread over the file (for file systems with coarse timestamps)."""
    stat = os.stat(path)
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for i in range(FINGERPRINT_BLOCKS):
            f.seek(stat.st_size * i // FINGERPRINT_BLOCKS)
            digest.update(f.read(FINGERPRINT_BLOCK_SIZE))
    return (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
            digest.hexdigest())


def load_adapter(path: str) -> LoadedAdapter:
    """Load `path` once per version of the file (`file_identity`) and wrap it for the host."""
    key = file_identity(path)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    offload = mm.unet_offload_device()
    adapter = load_ip_adapter(path, device=offload)  # the file's dtype: loading costs what reading costs
    patcher = comfy.model_patcher.ModelPatcher(
        _ManagedWeights(adapter), load_device=mm.get_torch_device(), offload_device=offload
    )
    loaded = LoadedAdapter(adapter, patcher, path)
    _CACHE[key] = loaded
    return loaded
