"""Where, and in which dtype, adapter math runs: on the device the weights were loaded to, never in half precision on
the CPU (slow there, and the Resampler loses accuracy), whatever mix of devices and dtypes a partial (low-VRAM) load
left behind."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

HALF_DTYPES = (torch.float16, torch.bfloat16)
COMPUTE_DTYPES = (torch.float32, torch.float64, *HALF_DTYPES)


def compute_dtype(device: torch.device | str, storage: torch.dtype, wanted: torch.dtype | None = None
                  ) -> torch.dtype:
    """The dtype to compute in for weights stored as `storage` on `device`, when the result is wanted in `wanted`:
    the wider of the two (fp16 weights feeding a float32 UNet compute in float32), float32 on the CPU or for
    storage-only types (fp8)."""
    dtype = storage if wanted is None else torch.promote_types(storage, wanted)
    if dtype not in COMPUTE_DTYPES or (torch.device(device).type == "cpu" and dtype in HALF_DTYPES):
        return torch.float32
    return dtype


def _placed(value: Any, device: torch.device | str, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
    return value


def run_on(module: nn.Module, device: torch.device | str, dtype: torch.dtype, *args: Any, **kwargs: Any) -> Any:
    """`module(*args, **kwargs)` with every parameter, buffer and tensor argument on `device` in `dtype`; the module
    itself is left untouched.

    Tensors already in place are used as they are (no copy); others are cast for this call only.
    """
    state = {name: _placed(t, device, dtype) for name, t in [*module.named_parameters(), *module.named_buffers()]}
    args = tuple(_placed(a, device, dtype) for a in args)
    kwargs = {k: _placed(v, device, dtype) for k, v in kwargs.items()}
    return functional_call(module, state, args, kwargs)
