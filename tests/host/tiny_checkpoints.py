"""Tiny full checkpoints (UNet + text encoder + VAE) in the format CheckpointLoaderSimple reads.

The host's text encoders have fixed configs (CLIP-L: 12 layers; SDXL's CLIP-G: 32 layers, 695M parameters), so the
stand-in text encoders are the host's own classes shrunk through the host's own `te_model_options`
("clip_l_model_config" / "clip_g_model_config": fewer layers, a narrow MLP; widths, vocabulary and tokenizers stay
real, so conditioning has the real shapes). The checkpoint is laid out by the host's `state_dict_for_saving`, as
CheckpointSave writes it; loading it needs the same options, which the stand-in loader hook passes.
Host modules are imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import torch

from tests.host.tiny_models import TinyUNet, tiny_taesd_state_dict

TEXT_LAYERS = 3  # SDXL's CLIP-L uses the penultimate layer, which must exist
TEXT_MLP = 64
TEXT_ENCODER_OPTIONS: dict[str, dict[str, int]] = {
    f"clip_{name}_model_config": {"num_hidden_layers": TEXT_LAYERS, "intermediate_size": TEXT_MLP}
    for name in ("l", "g")
}
STORAGE_DTYPE = torch.float16  # halves the files; stand-ins need no float32 parity


def _random_like(key: str, value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """LayerNorm-friendly random weights: matrices ~ N(0, 1/fan_in), 1-D weights 1, biases 0."""
    if not value.is_floating_point() or value.ndim == 0:
        return value
    if value.ndim == 1:
        return torch.zeros_like(value) if key.endswith("bias") else torch.ones_like(value)
    fan_in = value[0].numel()
    return (torch.randn(value.shape, generator=generator) / fan_in**0.5).to(value.dtype)


def tiny_text_encoder(unet: TinyUNet, seed: int = 0) -> Any:
    """The host's CLIP (comfy.sd.CLIP) of the UNet's family, shrunk, with seeded random weights."""
    import comfy.sd

    target = unet.patcher.model.model_config.clip_target()
    clip = comfy.sd.CLIP(target, model_options=TEXT_ENCODER_OPTIONS)
    generator = torch.Generator().manual_seed(seed)
    state = {k: _random_like(k, v, generator) for k, v in clip.cond_stage_model.state_dict().items()}
    missing, unexpected = clip.cond_stage_model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return clip


def tiny_checkpoint_state_dict(unet: TinyUNet, seed: int = 0) -> dict[str, torch.Tensor]:
    """UNet + tiny text encoder + TAESD, keys as the host saves a checkpoint of this family."""
    clip = tiny_text_encoder(unet, seed)
    state = unet.patcher.model.state_dict_for_saving(clip.get_sd(), None, None)
    state.update({f"first_stage_model.{k}": v for k, v in tiny_taesd_state_dict(seed).items()})
    return {k: (v.to(STORAGE_DTYPE) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
