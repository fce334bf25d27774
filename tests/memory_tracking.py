"""Peak tensor memory of a piece of code, deterministic and device independent (CPU runs have no allocator stats).

Every tensor storage created while the tracker is active counts from its creation until it is freed: storages keep
one Python object for their whole life, so a finalizer on it fires exactly when the memory is released. Buffers an
operator allocates and frees inside itself are not seen; everything a Python caller can hold is. The counts are bytes
of tensor storage, so they are the same on every machine for the same code and shapes.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorMemory(TorchDispatchMode):
    """`with PeakTensorMemory() as m: ...` then `m.peak` (bytes); `m.live` is what is still held afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: weakref.WeakSet = weakref.WeakSet()

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def _storages(self, tree: object) -> list:
        return [t.untyped_storage() for t in tree_flatten(tree)[0]
                if isinstance(t, torch.Tensor) and t.device.type != "meta"]

    def _track(self, storages: list) -> None:
        for storage in storages:
            if storage in self._seen:
                continue
            self._seen.add(storage)
            nbytes = storage.nbytes()
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # Storages made before the tracker started (model weights, inputs) are never counted, not even when an
        # operator returns a view of them.
        self._seen.update(s for s in self._storages((args, kwargs)) if s not in self._seen)
        out = func(*args, **(kwargs or {}))
        self._track(self._storages(out))
        return out


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Bytes of the given tensors' storages."""
    return sum(t.untyped_storage().nbytes() for t in tensors)
