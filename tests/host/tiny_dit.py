"""Tiny diffusion transformers in the host's own classes, with diffusers twins holding the same weights, plus a tiny
SigLIP vision encoder and diffusers' own IP-Adapter loaders as the reference for the DiT parity tests.

- FLUX.1: the host's detection hard-codes the full width (3072, 24 heads), so the host model is built directly from
  `comfy.supported_models.Flux` with a tiny config and the twin's weights mapped by `convert_diffusers_mmdit`. Its
  text width stays 4096: diffusers builds XLabs v2's 16-token projection only for a 65536-row projection, and reads
  image tokens at the transformer's text width.
- SD3.5: the host's MMDiT detection reads the depth off the weights (hidden = 64 * depth), so a depth-2 twin loads
  through `comfy.sd.load_diffusion_model_state_dict`, as a UNETLoader file would.

All weights are fan-in scaled (std 1/sqrt(fan_in)). Host modules are imported inside the functions (start the host
first). Builds are cached per process (`cached`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

FLUX, SD35 = "flux", "sd35"
FLUX_HEADS, FLUX_HEAD_DIM, FLUX_BLOCKS, FLUX_SINGLE_BLOCKS = 2, 16, 2, 1
FLUX_AXES = (4, 6, 6)
T5_WIDTH, POOLED_WIDTH, LATENT_CHANNELS = 4096, 16, 16
SD3_TEXT_WIDTH, SD3_POS_EMBED = 32, 16
SD3_HEAD_DIM = 64  # the host's MMDiT: hidden = 64 * depth, heads = depth
GUIDANCE = 3.5
SIGLIP_CONFIG: dict[str, Any] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                     patch_size=14, image_size=384, hidden_act="gelu_pytorch_tanh",
                                     layer_norm_eps=1e-6, num_channels=3)
SIGLIP_MEAN_STD = [0.5, 0.5, 0.5]
_CACHE: dict[Any, Any] = {}


def release_cached() -> None:
    """Drop every cached build (call while the host's modules are intact: ModelPatcher.__del__ needs them)."""
    _CACHE.clear()


def cached(key: Any, build: Callable[[], Any]) -> Any:
    """One build per process for `key` (session-shared tiny models; clone patchers before patching them)."""
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def refill_(module: torch.nn.Module, seed: int) -> None:
    """Fan-in scaled normal weights; norm weights near 1 and biases near 0 (buffers such as pos_embed are kept)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.ndim > 1:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)


@dataclass
class TinyDiT:
    """One tiny transformer in both frameworks.

    Attributes:
        kind: FLUX or SD35.
        twin: the diffusers transformer (eval, no grad); never patched by the host.
        patcher: the host's ModelPatcher (session-shared: clone before patching).
        depth: blocks the adapters patch (Flux double blocks / MMDiT joint blocks).
        hidden: block width.
    """

    kind: str
    twin: torch.nn.Module
    patcher: Any
    depth: int
    hidden: int

    def host_state_dict(self) -> dict[str, torch.Tensor]:
        """The twin's weights in the host's key layout (as a diffusion_models file holds them)."""
        import comfy.model_detection

        sd = {k: v.clone() for k, v in self.twin.state_dict().items()}
        return comfy.model_detection.convert_diffusers_mmdit(sd, "")


def flux_unet_config() -> dict[str, Any]:
    return dict(image_model="flux", in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, vec_in_dim=POOLED_WIDTH,
                context_in_dim=T5_WIDTH, hidden_size=FLUX_HEADS * FLUX_HEAD_DIM, mlp_ratio=4.0, num_heads=FLUX_HEADS,
                depth=FLUX_BLOCKS, depth_single_blocks=FLUX_SINGLE_BLOCKS, axes_dim=list(FLUX_AXES), theta=10000,
                patch_size=2, qkv_bias=True, guidance_embed=True)


def build_tiny_flux(seed: int = 0) -> TinyDiT:
    """A seeded tiny FLUX.1-dev (guidance embedding) as a host ModelPatcher and a diffusers twin."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from diffusers import FluxTransformer2DModel

    twin = FluxTransformer2DModel(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=FLUX_BLOCKS,
                                  num_single_layers=FLUX_SINGLE_BLOCKS, attention_head_dim=FLUX_HEAD_DIM,
                                  num_attention_heads=FLUX_HEADS, joint_attention_dim=T5_WIDTH,
                                  pooled_projection_dim=POOLED_WIDTH, guidance_embeds=True, axes_dims_rope=FLUX_AXES)
    twin.eval().requires_grad_(False)
    refill_(twin, seed)
    tiny = TinyDiT(FLUX, twin, None, FLUX_BLOCKS, FLUX_HEADS * FLUX_HEAD_DIM)
    config = comfy.supported_models.Flux(flux_unet_config())
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    model.diffusion_model.load_state_dict(tiny.host_state_dict(), strict=True)
    tiny.patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                    offload_device=mm.unet_offload_device())
    return tiny


def build_tiny_mmdit(depth: int = 2, seed: int = 0) -> TinyDiT:
    """A seeded tiny SD3.5-Large-shaped MMDiT (qk RMS norm, no dual attention), loaded through host detection."""
    import comfy.sd
    from diffusers import SD3Transformer2DModel

    twin = SD3Transformer2DModel(sample_size=SD3_POS_EMBED, patch_size=2, in_channels=LATENT_CHANNELS,
                                 num_layers=depth, attention_head_dim=SD3_HEAD_DIM, num_attention_heads=depth,
                                 joint_attention_dim=SD3_TEXT_WIDTH, caption_projection_dim=SD3_HEAD_DIM * depth,
                                 pooled_projection_dim=POOLED_WIDTH, out_channels=LATENT_CHANNELS,
                                 pos_embed_max_size=SD3_POS_EMBED, qk_norm="rms_norm")
    twin.eval().requires_grad_(False)
    refill_(twin, seed)
    patcher = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in twin.state_dict().items()})
    assert patcher is not None and type(patcher.model.model_config).__name__ == "SD3"
    return TinyDiT(SD35, twin, patcher, depth, SD3_HEAD_DIM * depth)


@dataclass
class TinySiglip:
    """A tiny SigLIP-384 vision encoder: the host's CLIP_VISION object and a transformers SiglipVisionModel twin."""

    host: Any
    transformers: torch.nn.Module
    config_path: Path

    def state_dict(self) -> dict[str, torch.Tensor]:
        """In the host's key layout (`vision_model.*`)."""
        sd = self.transformers.state_dict()
        return {k if k.startswith("vision_model.") else f"vision_model.{k}": v.clone() for k, v in sd.items()}


def build_tiny_siglip(directory: Path, seed: int = 0) -> TinySiglip:
    """729 tokens (384 px, patch 14) as SigLIP-384, 32 wide; weights rounded to the host's storage dtype."""
    import comfy.clip_vision
    import comfy.model_management as mm
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from tests.host.tiny_models import round_to_dtype_

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = SiglipVisionModel(SiglipVisionConfig(**SIGLIP_CONFIG, vision_use_head=False))
    twin.eval().requires_grad_(False)
    round_to_dtype_(twin, mm.text_encoder_dtype(mm.text_encoder_device()))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"tiny_siglip_{seed}.json"
    path.write_text(json.dumps(dict(SIGLIP_CONFIG, model_type="siglip_vision_model", image_mean=SIGLIP_MEAN_STD,
                                    image_std=SIGLIP_MEAN_STD), indent=1))
    tiny = TinySiglip(comfy.clip_vision.ClipVisionModel(str(path)), twin, path)
    missing, unexpected = tiny.host.load_sd(tiny.state_dict())
    assert not missing and not unexpected, (missing, unexpected)
    return tiny


# Twin predictions (velocities) for the inputs the host gives its transformer.

def _pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C), the order of the host's `process_img` and diffusers' `_pack_latents`."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def _unpack(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b = y.shape[0]
    return y.view(b, h // 2, w // 2, -1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, h, w)


def flux_twin_velocity(twin: torch.nn.Module, x: torch.Tensor, sigma: float, context: torch.Tensor,
                       pooled: torch.Tensor, ip_embeds: list[torch.Tensor] | None = None) -> torch.Tensor:
    """diffusers FLUX.1's prediction at timestep sigma (it scales by 1000 itself), guidance GUIDANCE."""
    b, _, h, w = x.shape
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None]
    kwargs = None if ip_embeds is None else {"ip_adapter_image_embeds": ip_embeds}
    with torch.no_grad():
        out = twin(hidden_states=_pack(x), encoder_hidden_states=context, pooled_projections=pooled,
                   timestep=torch.full((b,), sigma), img_ids=ids.reshape(-1, 3),
                   txt_ids=torch.zeros(context.shape[1], 3), guidance=torch.full((b,), GUIDANCE),
                   joint_attention_kwargs=kwargs).sample
    return _unpack(out, h, w)


def sd3_twin_velocity(twin: torch.nn.Module, x: torch.Tensor, sigma: float, context: torch.Tensor,
                      pooled: torch.Tensor, ip_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers SD3's prediction at timestep sigma * 1000 (the host's ModelSamplingDiscreteFlow multiplier)."""
    kwargs = None if ip_embeds is None else {"ip_adapter_image_embeds": ip_embeds}
    with torch.no_grad():
        return twin(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                    timestep=torch.full((x.shape[0],), sigma * 1000), joint_attention_kwargs=kwargs).sample


# diffusers' IP-Adapter loaders on a copy of the twin (their pipeline mixins need only `transformer`).

def twin_with_xlabs(tiny: TinyDiT, folder: Path, filenames: list[str], scales: list[float]) -> torch.nn.Module:
    """A copy of the Flux twin with XLabs files loaded by `FluxIPAdapterMixin.load_ip_adapter` (the files' own
    key layout, renamed by diffusers) and `set_ip_adapter_scale`."""
    from diffusers.loaders import FluxIPAdapterMixin

    pipe = type("XLabsReferencePipe", (FluxIPAdapterMixin,), {})()
    pipe.transformer = copy.deepcopy(tiny.twin)
    pipe.load_ip_adapter(str(folder), weight_name=filenames, image_encoder_pretrained_model_name_or_path=None)
    pipe.set_ip_adapter_scale(scales if len(scales) > 1 else scales[0])
    return pipe.transformer


def twin_with_instantx(tiny: TinyDiT, folder: Path, filename: str, scale: float) -> torch.nn.Module:
    """A copy of the SD3 twin with InstantX's file loaded by `SD3IPAdapterMixin.load_ip_adapter`."""
    from diffusers.loaders import SD3IPAdapterMixin

    pipe = type("InstantXReferencePipe", (SD3IPAdapterMixin,), {})()
    pipe.transformer = copy.deepcopy(tiny.twin)
    pipe.load_ip_adapter(str(folder), weight_name=filename, image_encoder_folder=None)
    pipe.set_ip_adapter_scale(scale)
    return pipe.transformer


def tiny_taesd16_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random 16-channel TAESD (the host's VAE loader recognises TAESD by `taesd_decoder.1.weight` and reads the
    latent channels off it), standing in for the FLUX.1 / SD3 VAE."""
    import comfy.taesd.taesd

    model = comfy.taesd.taesd.TAESD(latent_channels=LATENT_CHANNELS)
    refill_(model, seed)
    with torch.no_grad():
        model.vae_scale.fill_(1.0)
        model.vae_shift.zero_()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
