"""Full-size checks on the meta device: the host's real SD1.5 and SDXL UNets (built by its own model detection from
real-size key shapes) accept every official adapter of their family through Apply IP-Adapter's model check, with
every layer's width matching, and reject the other family's adapters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.factories import OFFICIAL, materialize
from tests.host.tiny_models import diffusers_to_ldm, ldm_layout

_SD15_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
#: The published diffusers configs of the two base models (only what shapes the attention layers).
FULL_CONFIGS = {
    "SD1.5": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                  attention_head_dim=8, **_SD15_BLOCKS),
    "SDXL": dict(block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}
HOST_CLASS = {"SD1.5": "SD15", "SDXL": "SDXL"}


@pytest.fixture(scope="module", params=sorted(FULL_CONFIGS))
def host_model(request, comfy_host):
    """A stand-in ModelPatcher around the host's full-size UNet on the meta device."""
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from diffusers import UNet2DConditionModel

    config = FULL_CONFIGS[request.param]
    with torch.device("meta"):
        twin = UNet2DConditionModel(**config)
    ldm = diffusers_to_ldm(twin.state_dict(), ldm_layout(config))
    unet_config = comfy.model_detection.detect_unet_config(ldm, "")
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, ldm)
    assert type(model_config).__name__ == HOST_CLASS[request.param]
    unet_config = model_config.unet_config  # with the family's extra settings (heads), as the host builds it
    unet = UNetModel(**unet_config, device="meta", operations=comfy.ops.disable_weight_init)
    base = SimpleNamespace(diffusion_model=unet, model_config=SimpleNamespace(unet_config=unet_config))
    return request.param, SimpleNamespace(model=base)


def _adapter(core, checkpoint):
    shapes = checkpoint.shapes()
    groups = core.checkpoint.CheckpointGroups(f"{checkpoint.stem}.safetensors", materialize(shapes["image_proj"]),
                                              materialize(shapes["ip_adapter"]))
    return core.IPAdapter.from_groups(groups, device="meta")


@pytest.mark.parametrize("checkpoint", OFFICIAL, ids=lambda c: c.stem)
def test_official_adapters_fit_their_family_and_only_it(host_model, host_pack, checkpoint):
    family, model = host_model
    core = host_pack.module.ip_adapter
    check_model = host_pack.module.nodes.model_checks.check_model
    adapter = _adapter(core, checkpoint)
    if checkpoint.layout.family.value == family:
        layout = check_model(model, adapter)
        assert layout.num_layers == checkpoint.layout.num_layers
        assert not layout.custom  # the host's full-size UNet is recognised as the standard table
    else:
        with pytest.raises(core.IncompatibleModelError, match=f"{checkpoint.stem}.*{family}"):
            check_model(model, adapter)


def test_host_full_size_widths_equal_the_layout_table(host_model, host_pack):
    family, model = host_model
    core = host_pack.module.ip_adapter
    widths = host_pack.module.nodes.model_checks.attn2_widths(model.model.diffusion_model)
    layout = core.LAYOUTS[core.BaseFamily(family)]
    assert widths == {layer.patch_key: layer.width for layer in layout.layers}
