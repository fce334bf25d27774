"""The two hooks the host calls on every object in its patch tables, shared by the UNet and DiT patches: `.to` when
the model moves (drop cached copies held elsewhere) and `.models` (the host objects to load and offload with it)."""

from __future__ import annotations

import torch


class EntryHostHooks:
    """Mixin for a patch whose stacked entries (`self.entries`, each with `keep_only(device)` and `owners`) hold
    device-bound caches and host-managed objects."""

    def to(self, device_or_dtype: torch.device | torch.dtype | str):
        """Host hook: called with the load/offload device, then the model's storage dtype (ignored: terms are cast
        to the layer's dtype at call time, so fp8 models never push the adapter into fp8)."""
        if not isinstance(device_or_dtype, torch.dtype):
            for entry in self.entries:
                entry.keep_only(device_or_dtype)
        return self

    def models(self) -> list:
        """Host hook: the objects to load and offload with the model (each once)."""
        seen: dict[int, object] = {}
        for entry in self.entries:
            for owner in entry.owners:
                seen.setdefault(id(owner), owner)
        return list(seen.values())
