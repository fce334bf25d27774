"""Checks that an adapter fits the UNet it is applied to, before any sampling starts."""

from __future__ import annotations

from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..ip_adapter import AdapterSpec, IncompatibleModelError, IPAdapter
from ..ip_adapter.layout import LAYOUTS, UNetLayout
from ..ip_adapter.model_layout import BlockTransformer, layout_from_blocks
from .dit.target import describe_model

FAMILY_BY_CONTEXT = {layout.cross_attention_dim: family for family, layout in LAYOUTS.items()}
#: UNet families with cross-attention that no IP-Adapter file here fits, by context width.
OTHER_FAMILIES = {1024: "SD2.x"}


def _transformers(block) -> list[SpatialTransformer]:
    return [m for m in block.children() if isinstance(m, SpatialTransformer)]


def _blocks(unet: UNetModel) -> list[tuple[str, int, object]]:
    """ComfyUI's blocks in execution order: input, middle, output."""
    groups = [("input", i, b) for i, b in enumerate(unet.input_blocks)]
    groups += [("middle", 0, unet.middle_block)]
    return groups + [("output", i, b) for i, b in enumerate(unet.output_blocks)]


def attn2_widths(unet: UNetModel) -> dict[tuple[str, int, int], int]:
    """Every attn2 patch key of a ComfyUI UNet with its inner width (heads * dim_head)."""
    widths = {}
    for name, number, block in _blocks(unet):
        for st in _transformers(block):
            for j, tb in enumerate(st.transformer_blocks):
                widths[(name, number, j)] = tb.attn2.to_k.out_features
    return widths


def model_transformers(unet: UNetModel) -> list[BlockTransformer]:
    """The UNet's SpatialTransformers in execution order, with depth and attn2 width."""
    return [BlockTransformer(name, number, len(st.transformer_blocks), st.transformer_blocks[0].attn2.to_k.out_features)
            for name, number, block in _blocks(unet) for st in _transformers(block) if st.transformer_blocks]


def _structure(layout: UNetLayout) -> list[tuple]:
    """Which checkpoint index patches which attn2 key in which transformer (widths aside: tiny test UNets)."""
    return [(layer.checkpoint_index, layer.patch_key, layer.transformer_index) for layer in layout.layers]


def model_layout(unet: UNetModel, spec: AdapterSpec, name: str) -> UNetLayout:
    """The model's own cross-attention layers, numbered as diffusers (and the trainer) number them: the standard
    table when the UNet has the standard SD1.5 / SDXL structure, else a custom layout read from its blocks."""
    try:
        own = layout_from_blocks(spec.family, spec.cross_attention_dim, model_transformers(unet), unet.num_res_blocks)
    except KeyError as e:
        raise IncompatibleModelError(
            f"'{name}' cannot be placed: the model's UNet has a SpatialTransformer in block {e} that a UNet with "
            f"{list(unet.num_res_blocks)} res blocks per level does not have; use a standard checkpoint.") from e
    standard = LAYOUTS[spec.family]
    return standard if _structure(own) == _structure(standard) else own


def _check_count(layout: UNetLayout, spec: AdapterSpec, name: str) -> None:
    if layout.num_layers == spec.num_layers:
        return
    theirs = "a custom layout" if spec.custom_layout else f"the standard {spec.family.value} layout"
    ours = "a pruned or distilled UNet" if layout.custom else f"the standard {spec.family.value} UNet"
    raise IncompatibleModelError(
        f"'{name}' has {spec.num_layers} cross-attention layers ({theirs}), but this model's UNet has "
        f"{layout.num_layers} ({ours}). An adapter fits only the UNet it was trained for: apply it to that model, or "
        "train one for this model with python -m ip_adapter.train.")


def _family_name(context_dim: int) -> str:
    family = FAMILY_BY_CONTEXT.get(context_dim)
    return family.value if family else OTHER_FAMILIES.get(context_dim, "an unknown UNet family")


def check_model(model, adapter: IPAdapter) -> UNetLayout:
    """Raise IncompatibleModelError naming both sides and the fix unless `adapter` fits `model`'s UNet."""
    spec, name = adapter.spec, adapter.name
    if spec.is_dit:
        raise IncompatibleModelError(
            f"'{name}' is a {spec.family.value} adapter; this node patches SD1.5/SDXL UNets. Use Apply IP-Adapter.")
    unet = getattr(model.model, "diffusion_model", None)
    if not isinstance(unet, UNetModel):
        raise IncompatibleModelError(
            f"'{name}' is an {spec.family.value} adapter, but the model is {describe_model(model)}. Use an "
            f"{spec.family.value} checkpoint, or an adapter made for this model.")
    context = model.model.model_config.unet_config.get("context_dim")
    if context != spec.cross_attention_dim:
        model_family = _family_name(context)
        fix = (f"load an adapter made for {model_family} models, or use an {spec.family.value} checkpoint"
               if context in FAMILY_BY_CONTEXT else f"use an {spec.family.value} checkpoint (IP-Adapter has no "
               f"official adapters for {model_family} models)")
        raise IncompatibleModelError(
            f"'{name}' is an {spec.family.value} adapter (cross-attention dim {spec.cross_attention_dim}) but the "
            f"model is {model_family} (cross-attention dim {context}); {fix}.")
    layout = model_layout(unet, spec, name)
    _check_count(layout, spec, name)
    widths = attn2_widths(unet)
    for layer in layout.layers:
        found = widths.get(layer.patch_key)
        expected = adapter.layers.width(layer.checkpoint_index)
        if found != expected:
            seen = "has no such layer" if found is None else f"has width {found}"
            raise IncompatibleModelError(
                f"'{name}' layer {layer.checkpoint_index} targets attn2 {layer.patch_key} of width {expected}, but "
                f"the model {seen}. The model's UNet does not have the layer widths the adapter was trained for "
                "(another base model, or a pruned or distilled variant?); use an adapter trained for it.")
    return layout
