"""Per-layer weights of the `ip_adapter` group: the decoupled `to_k_ip` / `to_v_ip` projections (and, for FaceID
checkpoints, their embedded rank-128 LoRA deltas), keyed by checkpoint index as in the file."""

from __future__ import annotations

import re

import torch
from torch import nn

from .statedict import StateDict, shape_of

_LORA_NAMES = ("to_q_lora", "to_k_lora", "to_v_lora", "to_out_lora")
_INDEX = re.compile(r"^(\d+)\.")


class LoRALinear(nn.Module):
    """`up(down(x))`, unscaled, as the FaceID checkpoints define it."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def _layer(sd: StateDict, index: int) -> nn.ModuleDict:
    modules: dict[str, nn.Module] = {}
    for name in ("to_k_ip", "to_v_ip"):
        if f"{index}.{name}.weight" in sd:
            out_f, in_f = shape_of(sd, f"{index}.{name}.weight")
            modules[name] = nn.Linear(in_f, out_f, bias=False)
    for name in _LORA_NAMES:
        if f"{index}.{name}.down.weight" in sd:
            rank, in_f = shape_of(sd, f"{index}.{name}.down.weight")
            modules[name] = LoRALinear(in_f, shape_of(sd, f"{index}.{name}.up.weight")[0], rank)
    return nn.ModuleDict(modules)


class LayerWeights(nn.ModuleDict):
    """`{"<index>": ModuleDict(to_k_ip=Linear, to_v_ip=Linear, [to_*_lora=LoRALinear])}`; state-dict keys equal
    the file's `ip_adapter` keys."""

    @classmethod
    def from_state_dict(cls, sd: StateDict) -> LayerWeights:
        indices = sorted({int(m.group(1)) for key in sd if (m := _INDEX.match(key))})
        return cls({str(i): _layer(sd, i) for i in indices})

    @property
    def ip_indices(self) -> list[int]:
        """Checkpoint indices that carry `to_k_ip`/`to_v_ip` (the cross-attention layers)."""
        return [int(i) for i, layer in self.items() if "to_k_ip" in layer]

    def project_kv(self, index: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, T, C) -> image keys and values (B, T, width) for layer `index`."""
        layer = self[str(index)]
        # Weights may sit on different devices when the host loads the adapter partially (low VRAM).
        k_proj, v_proj = layer["to_k_ip"], layer["to_v_ip"]
        k = k_proj(tokens.to(k_proj.weight.device, k_proj.weight.dtype))
        return k, v_proj(tokens.to(v_proj.weight.device, v_proj.weight.dtype))

    def width(self, index: int) -> int:
        """Inner dim of layer `index` (rows of its to_k_ip)."""
        return self[str(index)]["to_k_ip"].out_features
