"""A tiny ControlNet that the host's own ControlNetLoader accepts for a tiny UNet (comfy-host.md §7, §17).

The file is the original LDM layout (lllyasviel's `control_*.pth` / `.safetensors`, comfy/controlnet.py
`load_controlnet_state_dict`): the UNet's encoder half (`time_embed`, `input_blocks`, `middle_block`, and
`label_emb` for SDXL) copied from the tiny UNet, plus the ControlNet-only modules `input_hint_block`, `zero_convs` and
`middle_block_out`, all under `control_model.`. The host detects its config from those keys (no output blocks, so
detection falls back to the base config, as for every real ControlNet). The ControlNet-only weights are seeded random
and non-zero (a freshly initialised ControlNet has zero convs and adds nothing), so the ControlNet really changes the
prediction. Host modules are imported inside the functions: call these only after the host has started.
"""

from __future__ import annotations

import torch

from tests.host.tiny_models import TinyUNet

PREFIX = "control_model."
HINT_CHANNELS = 3
# Keys the ControlNet shares with its UNet (copied) and the ones only a ControlNet has (random).
SHARED_PREFIXES = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")
CONTROL_PREFIXES = ("input_hint_block.", "zero_convs.", "middle_block_out.")
# Zero-conv weights are scaled down so the residuals they add are of the order of the UNet's own activations.
ZERO_CONV_SCALE = 0.5
BIAS_SCALE = 0.01


def _random_like(shape: torch.Size, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    fan_in = int(torch.Size(shape[1:]).numel()) if len(shape) > 1 else 1
    return torch.randn(shape, generator=generator) * scale / fan_in**0.5


def control_only_shapes(unet_part: dict[str, torch.Tensor],
                        hint_channels: int = HINT_CHANNELS) -> dict[str, torch.Size]:
    """Shapes of the ControlNet-only weights for a UNet encoder, read off the host's own ControlNet module built on
    the meta device from the config the host's loader detects in `unet_part` (as load_controlnet_state_dict does)."""
    import comfy.cldm.cldm
    import comfy.model_detection
    import comfy.ops

    config = dict(comfy.model_detection.model_config_from_unet(unet_part, "", True).unet_config)
    config.pop("out_channels", None)
    skeleton = comfy.cldm.cldm.ControlNet(hint_channels=hint_channels, device="meta",
                                          operations=comfy.ops.disable_weight_init, **config)
    return {k: v.shape for k, v in skeleton.state_dict().items() if k.startswith(CONTROL_PREFIXES)}


def controlnet_state_dict(unet: TinyUNet, seed: int = 0, prefix: str = PREFIX,
                          hint_channels: int = HINT_CHANNELS) -> dict[str, torch.Tensor]:
    """The tiny ControlNet for `unet`, keys under `prefix` (the LDM `control_model.` layout by default).

    Raises:
        KeyError: the host's ControlNet has no ControlNet-only weights for this config (layout changed).
    """
    shared = {k: v.clone() for k, v in unet.ldm_state_dict().items() if k.startswith(SHARED_PREFIXES)}
    shapes = control_only_shapes(shared, hint_channels)
    if not any(k.startswith("zero_convs.") for k in shapes):
        raise KeyError(f"the host's ControlNet has no zero_convs for the tiny {unet.kind} UNet: {sorted(shapes)[:5]}")
    generator = torch.Generator().manual_seed(seed)
    out = dict(shared)
    for key in sorted(shapes):
        if key.endswith(".bias"):
            out[key] = torch.randn(shapes[key], generator=generator) * BIAS_SCALE
        else:
            scale = ZERO_CONV_SCALE if key.startswith(("zero_convs.", "middle_block_out.")) else 1.0
            out[key] = _random_like(shapes[key], generator, scale)
    return {f"{prefix}{k}": v for k, v in out.items()}


def controlnet_keys(state_dict: dict[str, torch.Tensor], prefix: str = PREFIX) -> set[str]:
    """The module keys of a ControlNet file (prefix removed), to compare with the host's loaded control model."""
    return {k[len(prefix):] for k in state_dict if k.startswith(prefix)}
