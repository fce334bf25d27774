"""Adapters made by the trainer, inside the real host: the trainer's modules are built on the tiny host UNets'
diffusers twins, moved off their initialisation (as training does), exported with the trainer's own export, loaded
by Load IP-Adapter and applied by Apply IP-Adapter. The host's noise prediction must equal the training forward pass.

A pruned UNet (one res block per level: 10 cross-attention layers instead of 16) gets a custom-layout adapter, which
the loader accepts and Apply matches to the model's own cross-attention layers. A layer count that does not fit the
model (custom on a standard UNet, standard on a pruned one) is refused naming the file and both counts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.factories import random_groups
from tests.host.ipa_setup import (
    SIGMA,
    PackNodes,
    adapter_groups,
    apply,
    image_proj_for,
    latent,
    reference_images,
    text_conds,
    twin_clip_inputs,
    write_adapter,
)
from tests.host.predict import host_eps
from tests.host.tiny_models import SD15, SDXL, UNET_CONFIGS, diffusers_to_ldm, ldm_layout

TOLERANCE = 1e-4  # float32 through two frameworks, as in the other host parity tests
MIN_EFFECT = 1e-2
TOKENS = 4
PRUNED_LAYERS = 10  # 3 down levels x 1 + 3 up levels x 2 + the middle block


@dataclass
class Trained:
    """A host model, its diffusers twin with the trainer's processors installed, and the trainer's adapter."""

    family: str  # "sd15" | "sdxl": which random text conditioning fits
    model: Any  # host ModelPatcher
    adapter: Any  # ip_adapter.train.module.TrainableAdapter (its UNet is the twin)
    kind: str


def _trainer_adapter(twin, clip, kind: str, seed: int):
    from ip_adapter.train.models import BaseModel, ImageEncoder
    from ip_adapter.train.module import build_adapter

    base = BaseModel(folder=None, unet=twin, vae=None, text_encoders=[], tokenizers=[], scheduler=None)
    widths = SimpleNamespace(projection_dim=clip.config["projection_dim"], hidden_size=clip.config["hidden_size"])
    adapter = build_adapter(base, ImageEncoder(None, SimpleNamespace(config=widths), None), kind, TOKENS, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # what training does: every weight moves off its initial value
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.detach().std().clamp(min=0.05) * 0.5)
    return adapter.eval()


def _export(adapter, host_models, name: str) -> str:
    from ip_adapter.train.export import write_adapter

    write_adapter(adapter.official_state_dict(), host_models.folder("ipadapter") / name, "fp32")
    return name


def _training_eps(trained: Trained, x: torch.Tensor, cond, clip_input: torch.Tensor) -> torch.Tensor:
    """The training forward pass at the host's input scaling (EPS model; sigma -> timestep as the host does)."""
    sampling = trained.model.model.model_sampling
    timestep = sampling.timestep(torch.full((x.shape[0],), SIGMA)).float()
    with torch.no_grad():
        return trained.adapter(x / (SIGMA**2 + 1.0) ** 0.5, timestep, cond.context, clip_input,
                               cond.added_cond_kwargs())


def _prompt(nodes: PackNodes, clip, seed: int = 3):
    images = reference_images(1, seed=seed)
    with torch.inference_mode():
        return images, nodes.encode.encode(clip.host, images, "center")[0]


def _assert_parity(nodes: PackNodes, trained: Trained, filename: str, clip) -> None:
    loaded = nodes.load.load(filename)[0]
    images, prompt = _prompt(nodes, clip)
    patched = apply(nodes, trained.model, loaded, prompt, weight=1.0)
    cond, _ = text_conds(SimpleNamespace(kind=trained.family))
    x = latent()
    ours = host_eps(patched, x, SIGMA, cond)[0]
    plain = host_eps(trained.model, x, SIGMA, cond)[0]
    positive, _ = twin_clip_inputs(clip, images, trained.kind)
    reference = _training_eps(trained, x, cond, positive[0])
    assert (ours - plain).abs().max() > MIN_EFFECT
    assert (ours - reference).abs().max() <= TOLERANCE


@pytest.fixture(scope="module")
def nodes(host_pack) -> PackNodes:
    return PackNodes.of(host_pack)


@pytest.mark.parametrize(("family", "kind"), [(SD15, "base"), (SD15, "plus"), (SDXL, "base"), (SDXL, "plus")])
def test_trained_adapter_runs_in_the_host_as_it_trained(nodes, tiny_sd15, tiny_sdxl, tiny_clip_vision, host_models,
                                                        family: str, kind: str) -> None:
    """The SDXL cases carry the size/crop conditioning through both the host and the training forward."""
    unet = tiny_sd15 if family == SD15 else tiny_sdxl
    adapter = _trainer_adapter(copy.deepcopy(unet.diffusers), tiny_clip_vision, kind, seed=len(kind))
    trained = Trained(family, unet.patcher, adapter, kind)
    filename = _export(adapter, host_models, f"trained-{kind}_{family}.safetensors")
    spec = nodes.load.load(filename)[0].adapter.spec
    assert (spec.kind, spec.custom_layout, spec.num_layers) == (kind, False, 16 if family == SD15 else 70)
    _assert_parity(nodes, trained, filename, tiny_clip_vision)


def _pruned_host_model():
    """A one-res-block-per-level SD1.5 UNet in the host (still detected as SD1.5) and its diffusers twin."""
    import comfy.sd
    from diffusers import UNet2DConditionModel

    config = dict(UNET_CONFIGS[SD15], layers_per_block=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        twin = UNet2DConditionModel(**config).eval().requires_grad_(False)
    ldm = diffusers_to_ldm(twin.state_dict(), ldm_layout(config))
    patcher = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in ldm.items()})
    assert type(patcher.model.model_config).__name__ == "SD15"
    return twin, patcher


@pytest.fixture(scope="module")
def pruned(comfy_host, tiny_clip_vision, host_models) -> tuple[Trained, str]:
    twin, patcher = _pruned_host_model()
    adapter = _trainer_adapter(twin, tiny_clip_vision, "base", seed=21)
    return Trained(SD15, patcher, adapter, "base"), _export(adapter, host_models, "pruned-base_sd15.safetensors")


def test_custom_layout_adapter_loads_and_matches_its_pruned_model(nodes, pruned, tiny_clip_vision) -> None:
    trained, filename = pruned
    spec = nodes.load.load(filename)[0].adapter.spec
    assert (spec.num_layers, spec.custom_layout) == (PRUNED_LAYERS, True)
    _assert_parity(nodes, trained, filename, tiny_clip_vision)


def _refused(nodes: PackNodes, model, filename: str, clip) -> str:
    """Apply's message for an adapter that does not fit `model`; the input model must stay unpatched."""
    _, prompt = _prompt(nodes, clip)
    before = copy.deepcopy(model.model_options)
    with pytest.raises(nodes.core.IncompatibleModelError) as info:
        apply(nodes, model, nodes.load.load(filename)[0], prompt)
    assert model.model_options == before
    return str(info.value)


def test_custom_layout_adapter_on_another_model_fails_naming_both_counts(nodes, pruned, tiny_sd15,
                                                                          tiny_clip_vision) -> None:
    _, filename = pruned
    message = _refused(nodes, tiny_sd15.patcher, filename, tiny_clip_vision)
    assert message.startswith(f"'{filename}' has {PRUNED_LAYERS} cross-attention layers (a custom layout), but this "
                              "model's UNet has 16 (the standard SD1.5 UNet)")
    assert "python -m ip_adapter.train" in message


def test_standard_adapter_on_the_pruned_model_fails_naming_both_counts(nodes, pruned, tiny_sd15, tiny_clip_vision,
                                                                       host_models) -> None:
    trained, _ = pruned
    groups = adapter_groups("base", tiny_sd15, tiny_clip_vision)
    filename = write_adapter(host_models, groups, "standard_sd15.safetensors")
    message = _refused(nodes, trained.model, filename, tiny_clip_vision)
    assert message.startswith(f"'{filename}' has 16 cross-attention layers (the standard SD1.5 layout), but this "
                              f"model's UNet has {PRUNED_LAYERS} (a pruned or distilled UNet)")


def test_sd15_count_at_sdxl_width_is_a_custom_layout_that_fits_no_standard_sdxl(nodes, tiny_sdxl, tiny_clip_vision,
                                                                                 host_models) -> None:
    """16 layers at width 2048 is what a pruned SDXL UNet may have: it loads, and the standard SDXL UNet refuses it."""
    groups = random_groups(image_proj_for("base", tiny_sdxl.context_dim, tiny_clip_vision), [64] * 16,
                           tiny_sdxl.context_dim)
    filename = write_adapter(host_models, groups, "pruned-16_sdxl.safetensors")
    spec = nodes.load.load(filename)[0].adapter.spec
    assert (spec.family.value, spec.num_layers, spec.custom_layout) == ("SDXL", 16, True)
    message = _refused(nodes, tiny_sdxl.patcher, filename, tiny_clip_vision)
    assert message.startswith(f"'{filename}' has 16 cross-attention layers (a custom layout), but this model's UNet "
                              "has 70 (the standard SDXL UNet)")


def test_layer_selective_weight_types_are_refused_on_custom_layouts(nodes, pruned, tiny_clip_vision) -> None:
    trained, filename = pruned
    _, prompt = _prompt(nodes, tiny_clip_vision)
    with pytest.raises(nodes.core.InvalidOptionError, match="custom layout"):
        apply(nodes, trained.model, nodes.load.load(filename)[0], prompt, weight_type="style transfer")
    patched = apply(nodes, trained.model, nodes.load.load(filename)[0], prompt, weight_type="weak input")
    keys = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(keys) == PRUNED_LAYERS
