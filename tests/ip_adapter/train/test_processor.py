"""The trained modules inside a diffusers UNet: processors on every cross-attention layer the model has, `to_k_ip` /
`to_v_ip` initialised from the layer's `to_k` / `to_v`, and a forward pass equal to diffusers' own IP-Adapter
(its loader and IPAdapterAttnProcessor2_0) on the exported weights, in float64."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from ip_adapter import TrainingSetupError
from ip_adapter.train.models import BaseModel, ImageEncoder
from ip_adapter.train.module import build_adapter
from ip_adapter.train.processor import AdapterAttnProcessor, cross_attention_layers, initial_layer_weights
from tests.ip_adapter.train import tiny_models as tm

TOKENS = {"base": 4, "plus": 6}
EMBEDS, HIDDEN, CLIP_TOKENS = 8, 16, 5
#: float64 everywhere, except the Resampler's softmax, which the official code (and so the pack) runs in float32.
TOLERANCE = {"base": 1e-12, "plus": 1e-7}


def _base(unet) -> BaseModel:
    return BaseModel(folder=None, unet=unet, vae=None, text_encoders=[], tokenizers=[], scheduler=None)


def _encoder() -> ImageEncoder:
    return ImageEncoder(None, SimpleNamespace(config=SimpleNamespace(projection_dim=EMBEDS, hidden_size=HIDDEN)), None)


@pytest.mark.parametrize("family", [tm.SD15, tm.SDXL])
def test_to_k_ip_and_to_v_ip_start_as_copies_of_every_cross_attention_layer(family: str) -> None:
    unet = tm.tiny_unet(family)
    names = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    layers = initial_layer_weights(unet)
    assert len(names) == tm.ATTN2_LAYERS[family]
    assert layers.ip_indices == list(range(1, 2 * len(names), 2))
    for n, name in enumerate(names):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        layer = layers[str(2 * n + 1)]
        assert torch.equal(layer["to_k_ip"].weight, attn.to_k.weight)
        assert torch.equal(layer["to_v_ip"].weight, attn.to_v.weight)
        assert layer["to_k_ip"].weight.data_ptr() != attn.to_k.weight.data_ptr()  # copies, not shared


def test_a_pruned_unet_gets_its_own_layer_count() -> None:
    unet = tm.tiny_unet(tm.SD15, layers_per_block=1, mid_block_type=None)
    adapter = build_adapter(_base(unet), _encoder(), "base", TOKENS["base"])
    assert len(adapter.adapter_modules.ip_indices) == 9  # 3 down levels x 1 + 3 up levels x 2; no mid block
    processors = [p for n, p in unet.attn_processors.items() if n.endswith("attn2.processor")]
    assert all(isinstance(p, AdapterAttnProcessor) for p in processors)
    assert [p.index for p in processors] == adapter.adapter_modules.ip_indices
    assert not any(isinstance(p, AdapterAttnProcessor) for n, p in unet.attn_processors.items()
                   if n.endswith("attn1.processor"))


def test_attn2_layers_that_are_not_cross_attention_are_refused() -> None:
    unet = tm.tiny_unet(tm.SD15)
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    attn.residual_connection = True
    with pytest.raises(TrainingSetupError, match="down_blocks.0.attentions.0.transformer_blocks.0.attn2.*residual"):
        cross_attention_layers(unet)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every trained weight away from its initial value, as training would. Values are float32-representable:
    diffusers' loader builds its modules in float32 before casting them to the UNet's dtype."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
            p.copy_(p.float().to(p.dtype))


def _inputs(family: str, kind: str, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    clip = r(batch, EMBEDS) if kind == "base" else r(batch, CLIP_TOKENS, HIDDEN)
    added = {"text_embeds": r(batch, 8), "time_ids": r(batch, 6) * 10} if family == tm.SDXL else None
    return {"noisy": r(batch, 4, 8, 8), "timesteps": torch.tensor([10, 700]), "text": r(batch, 7, tm.CROSS_DIM),
            "clip": clip, "added_cond_kwargs": added}


def _nested(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        group, rest = key.split(".", 1)
        out[group][rest] = value
    return out


@pytest.mark.parametrize(("family", "kind"), [(tm.SD15, "base"), (tm.SD15, "plus"), (tm.SDXL, "plus")])
def test_training_forward_equals_diffusers_ip_adapter(family: str, kind: str) -> None:
    unet = tm.tiny_unet(family).double()
    reference = copy.deepcopy(unet)
    adapter = build_adapter(_base(unet), _encoder(), kind, TOKENS[kind], seed=3).double()
    _perturb(adapter, seed=4)
    reference._load_ip_adapter_weights([_nested(adapter.official_state_dict())], low_cpu_mem_usage=False)
    inputs = _inputs(family, kind)
    with torch.no_grad():
        ours = adapter(**inputs)
        added = dict(inputs["added_cond_kwargs"] or {}, image_embeds=[inputs["clip"][:, None]])
        theirs = reference(inputs["noisy"], inputs["timesteps"], encoder_hidden_states=inputs["text"],
                           added_cond_kwargs=added).sample
        plain = tm.tiny_unet(family).double()(inputs["noisy"], inputs["timesteps"],
                                              encoder_hidden_states=inputs["text"],
                                              added_cond_kwargs=inputs["added_cond_kwargs"]).sample
    assert (ours - plain).abs().max() > 1e-3  # the adapter really acts
    assert (ours - theirs).abs().max() <= TOLERANCE[kind]


def test_gradients_reach_only_the_adapter() -> None:
    unet = tm.tiny_unet(tm.SD15).requires_grad_(False)
    adapter = build_adapter(_base(unet), _encoder(), "plus", TOKENS["plus"])
    inputs = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
              for k, v in _inputs(tm.SD15, "plus").items()}
    adapter(**inputs).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    assert all(p.grad is None for p in unet.parameters())
    assert set(adapter.state_dict()) == {f"image_proj_model.{k}" for k in adapter.image_proj_model.state_dict()} | {
        f"adapter_modules.{k}" for k in adapter.adapter_modules.state_dict()}
