"""The LoRA that FaceID checkpoints carry in their `ip_adapter` group, renamed for the host's LoRA loader.

File keys are `<i>.to_{q,k,v,out}_lora.{down,up}.weight`, where `i` is the position in diffusers'
`unet.attn_processors` (self-attention at even i, cross-attention at odd i; checkpoints.md §6.3). They become
diffusers' attention-processor LoRA keys, `unet.<processor name>.to_q_lora.down.weight` (the names diffusers'
`_load_ip_adapter_loras` builds), which the host's `model_lora_keys_unet` maps onto its own UNet weights
(`unet.<module>.processor.to_q` -> `...to_q.weight`, `.processor.to_out` -> `...to_out.0.weight`). No alpha is stored,
so the host applies `strength * up @ down`, the official `lora_scale`.
"""

from __future__ import annotations

import re

import torch

from .errors import CheckpointFormatError
from .layout import UNetLayout

PREFIX = "unet."
_FILE_KEY = re.compile(r"^(\d+)\.(to_q_lora|to_k_lora|to_v_lora|to_out_lora)\.(down|up)\.weight$")
_CROSS_ATTENTION = ".attn2.processor"
#: "unet.<processor>.to_q_lora.down.weight" -> "unet.<processor>.to_q", the name the host's key map registers.
_BASE = re.compile(r"^(.*)_lora\.(down|up)\.weight$")


def processor_name(layout: UNetLayout, index: int) -> str:
    """diffusers' attention-processor name at position `index` of `unet.attn_processors` (attn1 even, attn2 odd)."""
    layer = layout.layers[index // 2]
    attention = ".attn2.processor" if index % 2 else ".attn1.processor"
    return layer.diffusers_name.replace(_CROSS_ATTENTION, attention)


def diffusers_lora(lora: dict[str, torch.Tensor], layout: UNetLayout, name: str) -> dict[str, torch.Tensor]:
    """Rename a FaceID LoRA from file keys to diffusers' processor LoRA keys; the tensors are shared, not copied.

    Raises:
        CheckpointFormatError: a key that is not a FaceID LoRA key, or an index beyond the layout's processors.
    """
    processors = 2 * layout.num_layers
    out = {}
    for key, tensor in lora.items():
        m = _FILE_KEY.match(key)
        if m is None or int(m.group(1)) >= processors:
            raise CheckpointFormatError(
                f"'{name}': LoRA key 'ip_adapter.{key}' does not address one of the {processors} attention layers of "
                f"an {layout.family.value} UNet. The file is corrupt or not an official FaceID checkpoint.")
        index, module, half = int(m.group(1)), m.group(2), m.group(3)
        out[f"{PREFIX}{processor_name(layout, index)}.{module}.{half}.weight"] = tensor
    return out


def lora_base_names(converted: dict[str, torch.Tensor]) -> set[str]:
    """The module names (`unet.<processor>.to_q`, ...) the converted keys address, as the host's key map lists them."""
    return {m.group(1) for key in converted if (m := _BASE.match(key))}
