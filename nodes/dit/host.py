"""The host's attention, as its own DiT blocks call it (its override hook, e.g. sage attention nodes, included)."""

from __future__ import annotations

from typing import Callable

import torch
from comfy.ldm.modules.attention import optimized_attention

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def host_attention(to: dict) -> AttentionFn:
    """(q, k, v, heads) -> output, all `[B, N, heads * dim_head]`, through the host's `optimized_attention`."""
    return lambda q, k, v, heads: optimized_attention(q, k, v, heads, transformer_options=to)
