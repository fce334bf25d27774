"""Which diffusion model a MODEL holds, and whether a DiT adapter fits it: checked when Apply IP-Adapter runs, so a
mismatch fails before sampling with a message naming both sides."""

from __future__ import annotations

from dataclasses import dataclass

from comfy.ldm.flux.model import Flux
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ...ip_adapter import IncompatibleModelError, IPAdapter
from ...ip_adapter.dit.layout import DIT_LAYOUTS
from ...ip_adapter.layout import LAYOUTS, BaseFamily

#: MMDiT depths of the released SD3 models (hidden = 64 * depth).
MMDIT_NAMES = {38: "SD3.5 Large", 24: "SD3 / SD3.5 Medium"}
UNET_NAMES = {layout.cross_attention_dim: family.value for family, layout in LAYOUTS.items()}


@dataclass(frozen=True)
class DiTTarget:
    """The blocks an adapter will patch.

    Attributes:
        family: the DiT family of the model.
        num_blocks: patchable blocks (Flux double blocks, MMDiT joint blocks).
        hidden_size: block width.
        heads: attention heads per block.
        patch_size: latent pixels per token side.
        description: the model in words, for messages.
    """

    family: BaseFamily
    num_blocks: int
    hidden_size: int
    heads: int
    patch_size: int
    description: str


def _flux(dm: Flux) -> DiTTarget:
    n = len(dm.double_blocks)
    return DiTTarget(BaseFamily.FLUX, n, dm.hidden_size, dm.num_heads, dm.patch_size,
                     f"a FLUX.1 model ({n} double blocks of width {dm.hidden_size})")


def _mmdit(dm: MMDiT) -> DiTTarget:
    n = len(dm.joint_blocks)
    name = MMDIT_NAMES.get(dm.depth, "an SD3-family model")
    return DiTTarget(BaseFamily.SD35_LARGE, n, dm.hidden_size, dm.num_heads, dm.patch_size,
                     f"{name} ({n} joint blocks of width {dm.hidden_size})")


def describe_model(model) -> str:
    """What the model is, in words (for messages about any adapter)."""
    dm = model.get_model_object("diffusion_model")
    if isinstance(dm, UNetModel):
        context = model.model.model_config.unet_config.get("context_dim")
        return f"{UNET_NAMES.get(context, f'a UNet with context width {context}')} (a UNet)"
    if isinstance(dm, (Flux, MMDiT)):
        return dit_target(model).description
    return f"a {type(dm).__name__}"


def dit_target(model) -> DiTTarget | None:
    """The model's DiT blocks, or None if it is not a FLUX.1 or SD3-family transformer."""
    dm = model.get_model_object("diffusion_model")
    if isinstance(dm, Flux):
        return _flux(dm)
    if isinstance(dm, MMDiT):
        return _mmdit(dm)
    return None


def _adapter_words(adapter: IPAdapter) -> str:
    spec = adapter.spec
    return (f"'{adapter.name}' is a {spec.family.value} adapter ({spec.kind}: {spec.num_layers} blocks of width "
            f"{adapter.layers.width(0)})")


def check_dit_model(model, adapter: IPAdapter) -> DiTTarget:
    """Raise IncompatibleModelError naming both sides unless the DiT `adapter` fits `model`."""
    spec, target = adapter.spec, dit_target(model)
    release = DIT_LAYOUTS[spec.family]
    fix = f"load a {release.model_name} model (Load Diffusion Model), or an adapter made for this model"
    if target is None or target.family is not spec.family:
        raise IncompatibleModelError(f"{_adapter_words(adapter)} but the model is {describe_model(model)}; {fix}.")
    width = adapter.layers.width(0)
    if target.num_blocks != spec.num_layers or target.hidden_size != width:
        raise IncompatibleModelError(f"{_adapter_words(adapter)} but the model is {target.description}; {fix}.")
    if spec.family is BaseFamily.SD35_LARGE:
        _check_joint_blocks(model, adapter, target, fix)
    return target


def _check_joint_blocks(model, adapter: IPAdapter, target: DiTTarget, fix: str) -> None:
    blocks = model.get_model_object("diffusion_model").joint_blocks
    if any(block.x_block.x_block_self_attn for block in blocks):
        raise IncompatibleModelError(f"{_adapter_words(adapter)} but the model ({target.description}) has the "
                                     f"dual-attention blocks of SD3.5 Medium; {fix}.")
    if adapter.layers.head_dim(0) * target.heads != target.hidden_size:
        raise IncompatibleModelError(f"{_adapter_words(adapter)} with heads of width {adapter.layers.head_dim(0)} "
                                     f"but the model's heads are {target.hidden_size // target.heads} wide; {fix}.")
