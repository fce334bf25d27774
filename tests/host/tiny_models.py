"""Tiny random models that ComfyUI's own loaders and model detection accept (comfy-host.md §17), each with a
diffusers / transformers twin holding the same weights, for parity tests.

UNets keep the real SD1.5 / SDXL block topology (every cross-attention layer at its real block position) and shrink
only what detection leaves free: all levels use the minimum 320 channels (channel_mult 1). Host modules are imported
inside the functions: call these only after the host has started (comfy_env.start_host).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SD15 = "sd15"
SDXL = "sdxl"

# model_channels must be 320 and context_dim 768 (SD1.5) / 2048 (SDXL) for detection; multipliers are free.
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    SD15: dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 320, 320, 320),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,  # diffusers' legacy name: 8 heads, as the host's SD15 num_heads
    ),
    SDXL: dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 320, 320),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, cross_attention_dim=2048,
        attention_head_dim=5,  # heads per level: 320 / 64, the host's num_head_channels for SDXL
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ),
}
HOST_MODEL_CLASS = {SD15: "BaseModel", SDXL: "SDXL"}
HOST_CONFIG_CLASS = {SD15: "SD15", SDXL: "SDXL"}
CONTEXT_DIM = {SD15: 768, SDXL: 2048}
POOLED_DIM = {SD15: None, SDXL: 1280}
LATENT_CHANNELS = 4

CLIP_VISION_CONFIG: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, patch_size=14, image_size=224,
    projection_dim=16, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3,
)


@dataclass
class TinyUNet:
    """One tiny UNet in both frameworks.

    Attributes:
        kind: "sd15" or "sdxl".
        diffusers: the `UNet2DConditionModel` twin (eval, no grad). Never patched by the host.
        patcher: the host's `ModelPatcher`, loaded through `comfy.sd.load_diffusion_model_state_dict`. Session-shared:
            clone it before patching.
        layout: the LDM unet_config fields the key map needs (num_res_blocks, channel_mult, transformer_depth...).
    """

    kind: str
    diffusers: torch.nn.Module
    patcher: Any
    layout: dict[str, Any]

    @property
    def context_dim(self) -> int:
        return CONTEXT_DIM[self.kind]

    @property
    def pooled_dim(self) -> int | None:
        return POOLED_DIM[self.kind]

    def ldm_state_dict(self) -> dict[str, torch.Tensor]:
        """The twin's weights in ComfyUI's LDM layout (no prefix), as UNETLoader files hold them."""
        return diffusers_to_ldm(self.diffusers.state_dict(), self.layout)


@dataclass
class TinyClipVision:
    """A tiny CLIP vision encoder in both frameworks.

    Attributes:
        config: the transformers-style config dict (also written to `config_path` for the host).
        transformers: `CLIPVisionModelWithProjection` (eval, no grad), weights rounded to the host's storage dtype.
        host: `comfy.clip_vision.ClipVisionModel` with the same weights: the host's CLIP_VISION object.
        config_path: the JSON config the host model was built from.
    """

    config: dict[str, Any]
    transformers: torch.nn.Module
    host: Any
    config_path: Path

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.transformers.state_dict().items()}


def ldm_layout(config: dict[str, Any]) -> dict[str, Any]:
    """The LDM unet_config fields of a diffusers UNet config, in the order the host's key map reads them.

    Output levels are listed shallow to deep with layers_per_block + 1 entries each; the host pops them from the end.
    """
    levels = len(config["block_out_channels"])
    per_level = config["layers_per_block"]
    layers = config.get("transformer_layers_per_block", 1)
    layers = [layers] * levels if isinstance(layers, int) else list(layers)
    down = [layers[i] if "CrossAttn" in t else 0 for i, t in enumerate(config["down_block_types"])]
    up = [layers[levels - 1 - i] if "CrossAttn" in t else 0 for i, t in enumerate(config["up_block_types"])]
    return {
        "num_res_blocks": [per_level] * levels,
        "channel_mult": [c // config["block_out_channels"][0] for c in config["block_out_channels"]],
        "transformer_depth": [d for d in down for _ in range(per_level)],
        "transformer_depth_output": [d for d in reversed(up) for _ in range(per_level + 1)],
        "transformer_depth_middle": layers[-1],
    }


def diffusers_to_ldm(state_dict: dict[str, torch.Tensor], layout: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename diffusers UNet keys to LDM keys with the host's own map (`comfy.utils.unet_to_diffusers`)."""
    import comfy.utils

    key_map = comfy.utils.unet_to_diffusers(layout)
    unmapped = [k for k in state_dict if k not in key_map]
    if unmapped:
        raise KeyError(f"the host's UNet key map has no entry for {len(unmapped)} keys, e.g. {unmapped[:3]}")
    out = {key_map[k]: v for k, v in state_dict.items()}
    if len(out) != len(state_dict):
        raise KeyError("the host's UNet key map sends two diffusers keys to one LDM key")
    return out


def build_tiny_unet(kind: str, seed: int = 0) -> TinyUNet:
    """A seeded tiny UNet and its host ModelPatcher, loaded and detected by the host.

    Raises:
        AssertionError: the host detected another model class or its model has other keys than the converted ones
            (the host itself only logs missing / unexpected UNet keys).
    """
    import comfy.sd
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = UNet2DConditionModel(**UNET_CONFIGS[kind]).eval().requires_grad_(False)
    layout = ldm_layout(UNET_CONFIGS[kind])
    ldm = diffusers_to_ldm(twin.state_dict(), layout)
    patcher = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in ldm.items()})
    assert patcher is not None, f"ComfyUI did not recognise the tiny {kind} UNet"
    detected = type(patcher.model.model_config).__name__
    assert detected == HOST_CONFIG_CLASS[kind], f"tiny {kind} UNet detected as {detected}"
    host_keys = set(patcher.model.diffusion_model.state_dict())
    assert host_keys == set(ldm), f"key mismatch: {sorted(host_keys ^ set(ldm))[:5]}"
    return TinyUNet(kind=kind, diffusers=twin, patcher=patcher, layout=layout)


def round_to_dtype_(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round every parameter to values `dtype` represents exactly, so a host storing weights in `dtype` loses none."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(dtype).to(p.dtype))


def build_tiny_clip_vision(directory: Path, seed: int = 0, **overrides: Any) -> TinyClipVision:
    """A seeded tiny CLIP vision model and the host's ClipVisionModel built from the same config and weights.

    The host stores CLIP vision weights as `text_encoder_dtype()` (float16 on CPU) and computes in float32, so the
    twin's weights are rounded to that dtype first; the encodings then agree to float32 precision.
    """
    import comfy.clip_vision
    import comfy.model_management
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = dict(CLIP_VISION_CONFIG, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = CLIPVisionModelWithProjection(CLIPVisionConfig(**config)).eval().requires_grad_(False)
    storage = comfy.model_management.text_encoder_dtype(comfy.model_management.text_encoder_device())
    round_to_dtype_(twin, storage)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"tiny_clip_vision_{seed}.json"
    config_path.write_text(json.dumps(dict(config, model_type="clip_vision_model"), indent=1))
    host = comfy.clip_vision.ClipVisionModel(str(config_path))
    missing, unexpected = host.load_sd({k: v.clone() for k, v in twin.state_dict().items()})
    assert not missing and not unexpected, f"tiny CLIP vision keys: missing {missing}, unexpected {unexpected}"
    return TinyClipVision(config=config, transformers=twin, host=host, config_path=config_path)


def _fill_(tensor: torch.Tensor, generator: torch.Generator) -> None:
    fan_in = tensor[0].numel() if tensor.ndim > 1 else 1
    tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)


def tiny_taesd_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random TAESD weights (~2.4M parameters; the host recognises TAESD by `taesd_decoder.1.weight`)."""
    import comfy.taesd.taesd

    generator = torch.Generator().manual_seed(seed)
    state = comfy.taesd.taesd.TAESD(latent_channels=LATENT_CHANNELS).state_dict()
    out = {}
    for key, value in state.items():
        tensor = torch.empty_like(value, dtype=torch.float32)
        if key == "vae_scale":
            tensor.fill_(1.0)
        elif key == "vae_shift":
            tensor.zero_()
        else:
            _fill_(tensor, generator)
        out[key] = tensor
    return out


def unet_lora_state_dict(unet: TinyUNet, module_suffix: str = "attn2.to_k", rank: int = 4, alpha: float = 4.0,
                         seed: int = 0, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA (`lora_unet_<ldm path>.lora_up/.lora_down/.alpha`) on every UNet Linear whose LDM path
    ends with `module_suffix`, e.g. "attn2.to_k". The host applies W + strength * alpha / rank * up @ down."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, weight in unet.ldm_state_dict().items():
        if not key.endswith(f"{module_suffix}.weight") or weight.ndim != 2:
            continue
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        out[f"{name}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=generator) * scale
        out[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=generator) * scale
        out[f"{name}.alpha"] = torch.tensor(alpha)
    if not out:
        raise KeyError(f"no UNet Linear weight ends with {module_suffix!r}")
    return out
