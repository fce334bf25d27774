"""The `IP_ADAPTER` value: a loaded adapter plus the host ModelPatcher that loads and offloads its weights."""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import torch

from ..ip_adapter import IPAdapter, load_ip_adapter

_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def storage_dtype() -> torch.dtype:
    """The UNet's dtype when it is a compute dtype; fp8 and other storage-only types fall back to fp16/fp32."""
    dtype = mm.unet_dtype()
    if dtype in _COMPUTE_DTYPES:
        return dtype
    return torch.float16 if mm.should_use_fp16() else torch.float32


def project(loaded: LoadedAdapter, **inputs: torch.Tensor | float | None) -> torch.Tensor:
    """`IPAdapter.project` where the host loads the adapter (its load device, in that device's compute dtype)."""
    mm.load_models_gpu([loaded.patcher])
    with torch.no_grad():
        return loaded.adapter.project(device=loaded.patcher.load_device, **inputs)


def load_adapter(path: str) -> LoadedAdapter:
    """Load `path` once per process (keyed by path, size and modification time) and wrap it for the host."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    offload = mm.unet_offload_device()
    adapter = load_ip_adapter(path, dtype=storage_dtype(), device=offload)
    patcher = comfy.model_patcher.ModelPatcher(
        _ManagedWeights(adapter), load_device=mm.get_torch_device(), offload_device=offload
    )
    loaded = LoadedAdapter(adapter, patcher, path)
    _CACHE[key] = loaded
    return loaded
