"""Decoupled cross-attention inside a diffusers UNet during training.

The adapter's processor is installed on every cross-attention (attn2) layer the model has, in diffusers' processor
order, so the layer list always comes from the model itself (SD1.5, SDXL, pruned or distilled UNets alike). The n-th
layer's `to_k_ip` / `to_v_ip` are stored under checkpoint index 2n+1 and start as copies of that layer's own
`to_k` / `to_v` (the official initialisation). The attention math is the pack's `decoupled_attention`, the same
function inference runs, with the image branch at scale 1.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import ImageTerm, decoupled_attention
from ..errors import TrainingSetupError
from ..weights import LayerWeights

ATTN2_SUFFIX = ".attn2.processor"
IMAGE_SCALE = 1.0


def cross_attention_layers(unet) -> list[tuple[str, nn.Module]]:
    """(processor name, Attention module) of every attn2 layer, in `unet.attn_processors` order.

    Raises:
        TrainingSetupError: an attn2 layer that is not plain cross-attention (the decoupled branch would not fit).
    """
    layers = []
    for name in unet.attn_processors:
        if not name.endswith(ATTN2_SUFFIX):
            continue
        attn = unet.get_submodule(name.removesuffix(".processor"))
        unsupported = [flag for flag, on in (
            ("self-attention in attn2", not attn.is_cross_attention), ("group_norm", attn.group_norm is not None),
            ("spatial_norm", attn.spatial_norm is not None), ("residual_connection", attn.residual_connection),
            ("rescale_output_factor", attn.rescale_output_factor != 1.0)) if on]
        if unsupported:
            raise TrainingSetupError(f"UNet layer '{name}' uses {', '.join(unsupported)}; only plain cross-attention "
                                     "layers can carry an adapter.")
        layers.append((name, attn))
    if not layers:
        raise TrainingSetupError("the UNet has no cross-attention layers; there is nothing to attach an adapter to.")
    return layers


def initial_layer_weights(unet) -> LayerWeights:
    """`to_k_ip` / `to_v_ip` for every cross-attention layer, copied from its `to_k` / `to_v` (float32)."""
    state = {}
    for n, (_, attn) in enumerate(cross_attention_layers(unet)):
        state[f"{2 * n + 1}.to_k_ip.weight"] = attn.to_k.weight.detach().float().clone()
        state[f"{2 * n + 1}.to_v_ip.weight"] = attn.to_v.weight.detach().float().clone()
    layers = LayerWeights.from_state_dict(state)
    layers.load_state_dict(state)
    return layers


class AdapterAttnProcessor:
    """attn2 processor: `to_out(Attn(q, K_text, V_text) + Attn(q, K_ip, V_ip))`.

    The context's last `num_tokens` tokens are the image prompt, the rest the text. Not an nn.Module: the weights
    live in the adapter's `LayerWeights`, so the UNet's own state is untouched.
    """

    def __init__(self, layers: LayerWeights, index: int, num_tokens: int) -> None:
        self.layers, self.index, self.num_tokens = layers, index, num_tokens

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs
                 ) -> torch.Tensor:
        """hidden_states: (B, N, C_q); encoder_hidden_states: (B, L + num_tokens, C_ctx). Returns (B, N, C_q)."""
        if encoder_hidden_states is None or attention_mask is not None:
            raise ValueError("the adapter's attention needs an unmasked context of text + image tokens")
        text, image = encoder_hidden_states[:, : -self.num_tokens], encoder_hidden_states[:, -self.num_tokens:]
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        q, k, v = attn.to_q(hidden_states), attn.to_k(text), attn.to_v(text)
        k_ip, v_ip = self.layers.project_kv(self.index, image)
        out = decoupled_attention(q, k, v, attn.heads, [ImageTerm(k_ip, v_ip, IMAGE_SCALE)])
        return attn.to_out[1](attn.to_out[0](out.to(q.dtype)))


def install_processors(unet, layers: LayerWeights, num_tokens: int) -> int:
    """Put an `AdapterAttnProcessor` on every cross-attention layer (attn1 keeps its processor).

    Returns:
        The number of layers patched.
    """
    found = cross_attention_layers(unet)
    if len(found) != len(layers.ip_indices):
        raise TrainingSetupError(f"the adapter has {len(layers.ip_indices)} layers but the UNet has {len(found)} "
                                 "cross-attention layers.")
    for n, (_, attn) in enumerate(found):
        attn.set_processor(AdapterAttnProcessor(layers, 2 * n + 1, num_tokens))
    return len(found)
