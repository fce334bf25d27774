"""Per-layer weights of the `ip_adapter` group: the decoupled `to_k_ip` / `to_v_ip` projections, keyed by checkpoint
index as in the file. FaceID checkpoints also carry LoRA deltas for the UNet's own attention in the same group; they
are split off as plain tensors (`split_lora`) for the host's LoRA loader, never run here."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .placement import compute_dtype
from .statedict import StateDict, shape_of

#: FaceID LoRA keys inside the `ip_adapter` group: "<n>.to_{q,k,v,out}_lora.{down,up}.weight".
LORA_KEY = re.compile(r"^(\d+)\.(to_q_lora|to_k_lora|to_v_lora|to_out_lora)\.(down|up)\.weight$")
_INDEX = re.compile(r"^(\d+)\.")


def split_lora(sd: StateDict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Separate an `ip_adapter` group into its `to_k_ip`/`to_v_ip` weights and its FaceID LoRA tensors (file keys)."""
    lora = {k: v for k, v in sd.items() if LORA_KEY.match(k)}
    return {k: v for k, v in sd.items() if k not in lora}, lora


def _layer(sd: StateDict, index: int) -> nn.ModuleDict:
    modules: dict[str, nn.Module] = {}
    for name in ("to_k_ip", "to_v_ip"):
        if f"{index}.{name}.weight" in sd:
            out_f, in_f = shape_of(sd, f"{index}.{name}.weight")
            # XLabs' FLUX.1 adapters carry biases; the UNet adapters do not.
            modules[name] = nn.Linear(in_f, out_f, bias=f"{index}.{name}.bias" in sd)
    return nn.ModuleDict(modules)


def _project(linear: nn.Linear, tokens: torch.Tensor, wanted: torch.dtype | None) -> torch.Tensor:
    weight, bias = linear.weight, linear.bias  # XLabs' FLUX.1 adapters carry biases
    dtype = compute_dtype(weight.device, weight.dtype, wanted)
    return F.linear(tokens.to(weight.device, dtype), weight.to(dtype), None if bias is None else bias.to(dtype))


class LayerWeights(nn.ModuleDict):
    """`{"<index>": ModuleDict(to_k_ip=Linear, to_v_ip=Linear)}`; state-dict keys equal the file's `ip_adapter` keys
    (LoRA keys excluded, see `split_lora`)."""

    @classmethod
    def from_state_dict(cls, sd: StateDict) -> LayerWeights:
        indices = sorted({int(m.group(1)) for key in sd if (m := _INDEX.match(key)) and not LORA_KEY.match(key)})
        return cls({str(i): _layer(sd, i) for i in indices})

    @property
    def ip_indices(self) -> list[int]:
        """Checkpoint indices that carry `to_k_ip`/`to_v_ip` (the cross-attention layers)."""
        return [int(i) for i in self]

    def project_kv(self, index: int, tokens: torch.Tensor, wanted: torch.dtype | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, T, C) -> image keys and values (B, T, width) for layer `index`, each computed where its weight
        is (a partial low-VRAM load can leave them on different devices), in the compute dtype for that device and
        the dtype `wanted` by the caller (placement.compute_dtype)."""
        layer = self[str(index)]
        return tuple(_project(layer[name], tokens, wanted) for name in ("to_k_ip", "to_v_ip"))

    def width(self, index: int) -> int:
        """Inner dim of layer `index` (rows of its to_k_ip)."""
        return self[str(index)]["to_k_ip"].out_features
