"""What the DiT block patches take from the host at call time: the running diffusion model and latent size (put in
`transformer_options` by the guard wrapper, `guard.py`) and the host's attention function."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from comfy.ldm.modules.attention import optimized_attention

#: transformer_options key of the per-call context.
CONTEXT_KEY = "ip_adapter_dit_context"
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class CallContext:
    """One model call as the block patches need it.

    Attributes:
        diffusion_model: the transformer being run (honours object patches such as compiled models).
        latent_hw: the latent's (height, width), or None when unknown.
        patch_size: latent pixels per token side.
    """

    diffusion_model: torch.nn.Module
    latent_hw: tuple[int, int] | None
    patch_size: int

    @property
    def token_grid(self) -> tuple[int, tuple[int, int]] | None:
        """(tokens of the generated image, latent (h, w)), or None when the latent size is unknown."""
        if self.latent_hw is None:
            return None
        h, w = self.latent_hw
        return math.ceil(h / self.patch_size) * math.ceil(w / self.patch_size), self.latent_hw


def call_context(to: dict, fallback: CallContext) -> CallContext:
    """The guard's context for this call, or `fallback` (the model seen at apply time) without one."""
    return to.get(CONTEXT_KEY) or fallback


def host_attention(to: dict) -> AttentionFn:
    """The host's attention as its own blocks call it (its override hook, e.g. sage attention nodes, included)."""
    return lambda q, k, v, heads: optimized_attention(q, k, v, heads, transformer_options=to)
