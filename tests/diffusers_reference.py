"""The diffusers side of the parity tests: tiny UNets with the real SD1.5 / SDXL topologies, diffusers' own IP-Adapter
conversion and processors as the reference, and a test processor that runs the pack's shipped attn2 patch (the
object the host calls) inside the same UNet.

Only the widths are tiny. The block types, layers per block and transformer depths are the real ones, so the
attention-processor order (and with it the checkpoint index of every layer) is the real one too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from diffusers import UNet2DConditionModel
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0
from PIL import Image

from ip_adapter.layout import AttnLayer, UNetLayout
from tests.factories import Shapes, random_groups

CROSS_DIM = 32
LATENT_CHANNELS = 4
LATENT_SIZE = 16
TEXT_TOKENS = 7
TIMESTEP = 10
NORM_GROUPS = 8
ATTN2_SUFFIX = "attn2.processor"
#: Pixels per latent cell, as diffusers' pipelines size masks.
VAE_SCALE = 8

#: Real SD1.5 topology (4 levels, 2 resnets per block, one transformer per attention, 16 attn2); 8 heads of 4 or 16.
SD15_CONFIG: dict[str, Any] = dict(
    block_out_channels=(32, 64, 128, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8,  # diffusers' legacy name: this is the head count, as in SD1.5's own config
)
#: Real SDXL topology (3 levels, transformer depth 1/2/10, 70 attn2); head dim 8 instead of 64.
SDXL_CONFIG: dict[str, Any] = dict(
    block_out_channels=(16, 32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(2, 4, 8),
    use_linear_projection=True,
)
#: Full-size width / tiny width of every attention layer (SD1.5: 320/32, SDXL: 320/16).
SD15_WIDTH_FACTOR = 10
SDXL_WIDTH_FACTOR = 20

#: The host's attn2 replace signature: (q, k, v, extra_options) -> output in pre-`to_out` space.
Attn2Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]
#: layer -> the patch the host would call there.
PatchFor = Callable[[AttnLayer], Attn2Fn]


def tiny_unet(config: dict[str, Any], seed: int = 0) -> UNet2DConditionModel:
    """A randomly initialised, frozen fp32 UNet with the given topology and the shared tiny dimensions."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=2,
        cross_attention_dim=CROSS_DIM, norm_num_groups=NORM_GROUPS, **config,
    )
    return unet.requires_grad_(False).eval()


def attn2_names(unet: UNet2DConditionModel) -> list[str]:
    """Cross-attention processor names in `unet.attn_processors` order (the order diffusers numbers them in)."""
    return [name for name in unet.attn_processors if name.endswith(ATTN2_SUFFIX)]


def attention_module(unet: UNet2DConditionModel, processor_name: str) -> Attention:
    return unet.get_submodule(processor_name.removesuffix(".processor"))


def attn2_widths(unet: UNet2DConditionModel) -> list[int]:
    """Inner width of every cross-attention layer, in processor order (= checkpoint order)."""
    return [attention_module(unet, name).inner_dim for name in attn2_names(unet)]


def adapter_groups(unet: UNet2DConditionModel, image_proj: Shapes, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """A random official-format adapter (`image_proj` + `ip_adapter`) sized for `unet`'s cross-attention layers."""
    return random_groups(image_proj, attn2_widths(unet), CROSS_DIM, seed=seed)


def set_ip_scales(unet: UNet2DConditionModel, scales: Sequence[float]) -> None:
    """One scale per loaded adapter on every IP-Adapter processor (what `set_ip_adapter_scale(float)` does)."""
    for processor in unet.attn_processors.values():
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            processor.scale = list(scales)


def load_diffusers_adapters(
    unet: UNet2DConditionModel, groups: Sequence[dict[str, dict[str, torch.Tensor]]], scales: Sequence[float]
) -> None:
    """Load official-format adapters into `unet` with diffusers' own conversion, replacing any loaded before, and set
    one scale per adapter."""
    unet._load_ip_adapter_weights(list(groups), low_cpu_mem_usage=False)
    set_ip_scales(unet, scales)


def _check_plain_cross_attention(attn: Attention) -> None:
    extras = (attn.spatial_norm, attn.group_norm, attn.norm_cross, attn.residual_connection)
    if any(extras) or attn.rescale_output_factor != 1.0:
        raise NotImplementedError("TermProcessor handles plain cross-attention layers only")


class PatchProcessor:
    """attn2 processor: q/k/v from the layer's own projections, the patch the host would call, then `to_out`.

    `extra` plays the host's extra_options (cond_or_uncond, original_shape, ...); `n_heads` is the layer's."""

    def __init__(self, patch: Attn2Fn, extra: dict) -> None:
        self.patch, self.extra = patch, extra

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_plain_cross_attention(attn)
        if encoder_hidden_states is None or attention_mask is not None:
            raise NotImplementedError("PatchProcessor expects unmasked cross-attention")
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        out = self.patch(q, k, v, {**self.extra, "n_heads": attn.heads})
        return attn.to_out[1](attn.to_out[0](out))


def install_patches(unet: UNet2DConditionModel, layout: UNetLayout, patch_for: PatchFor, extra: dict) -> None:
    """Run `patch_for(layer)` on every attn2 layer of `unet` (matched to `layout` by diffusers name), replacing all
    processors; attn1 layers get diffusers' plain SDPA processor."""
    layers = {layer.diffusers_name: layer for layer in layout.layers}
    processors = {
        name: PatchProcessor(patch_for(layers[name]), extra) if name.endswith(ATTN2_SUFFIX) else AttnProcessor2_0()
        for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)


@dataclass(frozen=True)
class UNetTrio:
    """Three copies of one tiny UNet: untouched, diffusers' IP-Adapter reference, and ours (`PatchProcessor`s).

    Tests reload adapters into `reference` and reinstall processors on `ours` before each use; both replace
    everything set before, so nothing carries over from one test to the next.
    """

    plain: UNet2DConditionModel
    reference: UNet2DConditionModel
    ours: UNet2DConditionModel


def unet_trio(config: dict[str, Any], seed: int = 0) -> UNetTrio:
    plain = tiny_unet(config, seed)
    return UNetTrio(plain, copy.deepcopy(plain), copy.deepcopy(plain))


@dataclass(frozen=True)
class UNetInputs:
    """One denoising call's inputs. Shapes: sample (B, 4, S, S); text (B, TEXT_TOKENS, CROSS_DIM)."""

    sample: torch.Tensor
    timestep: int
    text: torch.Tensor


def unet_inputs(batch: int, seed: int) -> UNetInputs:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=g)
    return UNetInputs(sample, TIMESTEP, torch.randn(batch, TEXT_TOKENS, CROSS_DIM, generator=g))


def run_unet(unet: UNet2DConditionModel, inputs: UNetInputs, **kwargs: Any) -> torch.Tensor:
    """The UNet's prediction; extra keyword arguments go to `forward` (added_cond_kwargs, cross_attention_kwargs)."""
    with torch.no_grad():
        return unet(inputs.sample, inputs.timestep, encoder_hidden_states=inputs.text, **kwargs).sample


def left_half_latent_mask(size: int = LATENT_SIZE) -> torch.Tensor:
    """The same left half as MASK input in latent geometry. Shape: (1, size, size)."""
    mask = torch.zeros(1, size, size)
    mask[..., : size // 2] = 1.0
    return mask


def left_half_mask(size: int = LATENT_SIZE * VAE_SCALE) -> torch.Tensor:
    """A white left half, preprocessed as diffusers' pipelines expect it. Shape: (1, 1, size, size), values 0/1."""
    image = Image.new("L", (size, size), 0)
    image.paste(255, (0, 0, size // 2, size))
    return IPAdapterMaskProcessor().preprocess(image, height=size, width=size)
