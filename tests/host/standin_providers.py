"""The default stand-in providers: SD1.5 / SDXL checkpoints, LoRAs, ControlNets, VAEs, CLIP vision encoders, every
official SD1.5 / SDXL IP-Adapter file name, and input images; plus the loader hooks and node needs they require.

Stand-ins have the real *interfaces* of the files they replace: UNets have the real block topology, text encoders
the real widths and tokenizers, CLIP vision encoders the real output widths (ViT-H: image_embeds 1024, hidden 1280;
ViT-bigG: 1280 / 1664), adapters the real key layout for those widths. So the pack's detection, preset checks and
mismatch errors behave as with the real files; only depths and inner widths are tiny.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ip_adapter.presets import CLIP_VISION_FILES, VIT_BIGG, VIT_H, name_key, preset_files
from tests.factories import flat
from tests.host import standins as si
from tests.host.ipa_setup import adapter_groups
from tests.host.tiny_checkpoints import TEXT_ENCODER_OPTIONS, tiny_checkpoint_state_dict
from tests.host.tiny_models import SD15, SDXL, TinyClipVision, TinyUNet, build_tiny_clip_vision, unet_lora_state_dict

#: Tiny encoders with the real output widths (3 layers, narrow MLP).
CLIP_VISION_SHAPES: dict[str, dict[str, int]] = {
    VIT_H: dict(hidden_size=1280, projection_dim=1024, num_attention_heads=16, intermediate_size=64,
                num_hidden_layers=3),
    VIT_BIGG: dict(hidden_size=1664, projection_dim=1280, num_attention_heads=16, intermediate_size=64,
                   num_hidden_layers=3),
}
#: Official adapter names (pack preset table stems) -> (projection layout, family, encoder).
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "ip-adapter_sd15": ("base", SD15, VIT_H), "ip-adapter_sd15_light_v11": ("base", SD15, VIT_H),
    "ip-adapter_sd15_light": ("base", SD15, VIT_H), "ip-adapter-plus_sd15": ("plus", SD15, VIT_H),
    "ip-adapter-plus-face_sd15": ("plus", SD15, VIT_H), "ip-adapter-full-face_sd15": ("full-face", SD15, VIT_H),
    "ip-adapter_sd15_vit-G": ("base", SD15, VIT_BIGG), "ip_plus_composition_sd15": ("plus", SD15, VIT_H),
    "ip-adapter_sdxl_vit-h": ("base", SDXL, VIT_H), "ip-adapter-plus_sdxl_vit-h": ("plus", SDXL, VIT_H),
    "ip-adapter-plus-face_sdxl_vit-h": ("plus", SDXL, VIT_H), "ip-adapter_sdxl": ("base", SDXL, VIT_BIGG),
    "ip_plus_composition_sdxl": ("plus", SDXL, VIT_H),
}
#: (node, combo widget) -> the folder its file lives in.
WIDGET_FOLDERS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints", ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("LoadIPAdapter", "ipadapter_file"): "ipadapter", ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras", ("ControlNetLoader", "control_net_name"): "controlnet",
    ("VAELoader", "vae_name"): "vae", ("UNETLoader", "unet_name"): "diffusion_models",
    ("LoadImage", "image"): si.INPUT,
}
IMAGE_SIDE = 64
ADAPTER_DTYPE = torch.float16


@dataclass
class StandInContext:
    """What providers build from: the session's model files and tiny-model builders (cached by the caller)."""

    models: Any  # graph.ModelFiles
    unet: Callable[[str], TinyUNet]
    scratch: Path
    _encoders: dict[str, TinyClipVision] = field(default_factory=dict)

    def clip_vision(self, encoder: str) -> TinyClipVision:
        if encoder not in self._encoders:
            self._encoders[encoder] = build_tiny_clip_vision(self.scratch / "configs", seed=len(self._encoders) + 1,
                                                             **CLIP_VISION_SHAPES[encoder])
        return self._encoders[encoder]


def _family_of(name: str) -> str:
    return SDXL if "xl" in name.lower() else SD15


def _by_family(folder: str, make: Callable[[si.StandIns, Path, str], None]) -> list[si.StandIn]:
    """A fallback for every name (SD1.5) and one for names containing "xl" (SDXL)."""
    return [si.StandIn(folder, "*", lambda r, p: make(r, p, SD15), family=SD15),
            si.StandIn(folder, "*xl*", lambda r, p: make(r, p, SDXL), family=SDXL)]


def _write(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    if path.suffix.lower() == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save(tensors, path)


def _checkpoint(registry: si.StandIns, path: Path, family: str) -> None:
    _write(path, tiny_checkpoint_state_dict(registry.ctx.unet(family)))


def _lora(registry: si.StandIns, path: Path, family: str) -> None:
    _write(path, unet_lora_state_dict(registry.ctx.unet(family)))


def _controlnet(registry: si.StandIns, path: Path, family: str) -> None:
    from tests.host.tiny_controlnet import controlnet_state_dict

    _write(path, controlnet_state_dict(registry.ctx.unet(family), seed=3))


def _vae(registry: si.StandIns, path: Path) -> None:
    from tests.host.tiny_models import tiny_taesd_state_dict

    _write(path, tiny_taesd_state_dict())


def _named(names: tuple[str, ...] | list[str]) -> Callable[[str], bool]:
    keys = {name_key(n) for n in names}
    return lambda base: base.lower().endswith((".safetensors", ".bin")) and name_key(base.rsplit(".", 1)[0]) in keys


def _clip_vision_file(encoder: str) -> Callable[[si.StandIns, Path], None]:
    return lambda registry, path: _write(path, registry.ctx.clip_vision(encoder).state_dict())


def _adapter_file(stem: str) -> Callable[[si.StandIns, Path], None]:
    layout, family, encoder = ADAPTERS[stem]

    def make(registry: si.StandIns, path: Path) -> None:
        groups = adapter_groups(layout, registry.ctx.unet(family), registry.ctx.clip_vision(encoder), seed=4)
        groups = {g: {k: v.to(ADAPTER_DTYPE) for k, v in sd.items()} for g, sd in groups.items()}
        _write(path, flat(groups) if path.suffix.lower() == ".safetensors" else groups)

    return make


def _input_image(registry: si.StandIns, path: Path) -> None:
    """A seeded RGBA picture whose alpha has a transparent square (LoadImage's MASK: 1 there, 0 elsewhere)."""
    seed = int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16)
    rgb = np.random.default_rng(seed).integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    alpha = np.full((IMAGE_SIDE, IMAGE_SIDE, 1), 255, dtype=np.uint8)
    alpha[IMAGE_SIDE // 4: IMAGE_SIDE // 2, IMAGE_SIDE // 4: 3 * IMAGE_SIDE // 4] = 0
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA").save(path)


def _clip_vision_load_hook(registry: si.StandIns) -> Callable[[Callable], Callable]:
    """comfy.clip_vision.load picks its config by encoder depth; for stand-ins, build the host's ClipVisionModel from
    the stand-in's own config and load the file into it (a new object per call, as the real loader)."""

    def wrap(original: Callable) -> Callable:
        def load(ckpt_path: str) -> Any:
            stand_in = registry.of_path(ckpt_path)
            if stand_in is None or stand_in.folder != "clip_vision":
                return original(ckpt_path)
            import comfy.clip_vision
            import comfy.utils

            registry.record("comfy.clip_vision.load", ckpt_path)
            config = registry.ctx.clip_vision(stand_in.family).config_path
            model = comfy.clip_vision.ClipVisionModel(str(config))
            model.load_sd(comfy.utils.load_torch_file(ckpt_path))
            return model

        return load

    return wrap


def _checkpoint_hook(registry: si.StandIns) -> Callable[[Callable], Callable]:
    """Stand-in checkpoints carry tiny text encoders; tell the host's loader their size (te_model_options)."""

    def wrap(original: Callable) -> Callable:
        def load(ckpt_path: str, *args: Any, **kwargs: Any) -> Any:
            if registry.of_path(ckpt_path) is not None:
                registry.record("comfy.sd.load_checkpoint_guess_config", ckpt_path)
                kwargs["te_model_options"] = {**TEXT_ENCODER_OPTIONS, **kwargs.get("te_model_options", {})}
            return original(ckpt_path, *args, **kwargs)

        return load

    return wrap


def preset_needs(node_id: str, prompt: dict, registry: si.StandIns) -> list[tuple[str, str]]:
    """Load IP-Adapter Preset opens the official files of its preset for the upstream model's family."""
    from ip_adapter.layout import BaseFamily

    family = si.upstream_family(prompt, node_id, registry)
    if family is None:
        return []
    files = preset_files(BaseFamily.SD15 if family == SD15 else BaseFamily.SDXL, prompt[node_id]["inputs"]["preset"])
    needed = [(files.adapter.folder, files.adapter.save_as)]
    if files.clip_vision is not None:
        needed.append((files.clip_vision.folder, files.clip_vision.save_as))
    return needed


def default_standins(ctx: StandInContext) -> si.StandIns:
    """A registry with every default provider, hook, widget folder and node need."""
    registry = si.StandIns(ctx)
    for (class_type, widget), folder in WIDGET_FOLDERS.items():
        registry.widget_folder(class_type, widget, folder)
    for stand_in in (_by_family("checkpoints", _checkpoint) + _by_family("loras", _lora)
                     + _by_family("controlnet", _controlnet)):
        registry.add(stand_in)
    registry.add(si.StandIn("vae", "*", _vae))
    registry.add(si.StandIn(si.INPUT, "*", _input_image))
    for encoder, wanted in CLIP_VISION_FILES.items():
        registry.add(si.StandIn("clip_vision", _named(wanted.names), _clip_vision_file(encoder), family=encoder))
    for stem, (_, family, _) in ADAPTERS.items():
        registry.add(si.StandIn("ipadapter", _named([stem]), _adapter_file(stem), family=family))
    registry.hook("comfy.clip_vision.load", _clip_vision_load_hook(registry))
    registry.hook("comfy.sd.load_checkpoint_guess_config", _checkpoint_hook(registry))
    registry.needs("LoadIPAdapterPreset", preset_needs)
    return registry
