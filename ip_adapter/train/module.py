"""The trained part of an IP-Adapter: the pack's own image projection (ImageProjModel or Resampler) and per-layer
`to_k_ip` / `to_v_ip` (LayerWeights), wrapped with the frozen UNet for the training forward pass.

Submodules are named as in the official training scripts (`image_proj_model`, `adapter_modules`), so a training
checkpoint's `model.safetensors` has the official training-checkpoint keys, which the pack's loader also reads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..adapter import load_ip_adapter
from ..errors import IPAdapterError, TrainingSetupError
from ..projection import ImageProjModel
from ..resampler import RESAMPLER_HEAD_DIM, Resampler
from ..spec import ClipOutput, ProjectionType, encoder_name
from ..weights import LayerWeights
from .models import BaseModel, ImageEncoder
from .processor import initial_layer_weights, install_processors

RESAMPLER_DEPTH = 4
#: Resampler width of the official Plus adapters by context width (SDXL Plus: 1280); otherwise the context width.
PLUS_DIM = {2048: 1280}
KIND_PROJECTION = {"base": ProjectionType.IMAGE_PROJ, "plus": ProjectionType.RESAMPLER}
KIND_CLIP_OUTPUT = {"base": ClipOutput.IMAGE_EMBEDS, "plus": ClipOutput.HIDDEN_STATES}


class TrainableAdapter(nn.Module):
    """Trainable modules plus a reference to the frozen UNet (not a submodule: it is neither trained, nor saved, nor
    synchronised across processes)."""

    def __init__(self, image_proj: nn.Module, layers: LayerWeights, kind: str, unet: nn.Module) -> None:
        super().__init__()
        self.kind = kind
        self.image_proj_model = image_proj
        self.adapter_modules = layers
        object.__setattr__(self, "unet", unet)

    @property
    def clip_output(self) -> ClipOutput:
        return KIND_CLIP_OUTPUT[self.kind]

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, clip: torch.Tensor,
                added_cond_kwargs: dict | None = None) -> torch.Tensor:
        """The UNet's prediction with the image prompt.

        Args:
            noisy: noisy latents. Shape: (B, C, h, w).
            timesteps: Shape: (B,).
            text: text token embeddings. Shape: (B, L, cross_attention_dim).
            clip: the CLIP output the projection consumes: (B, E) image_embeds or (B, T, H) hidden states.
        """
        tokens = self.image_proj_model(clip)
        context = torch.cat([text, tokens], dim=1)
        return self.unet(noisy, timesteps, encoder_hidden_states=context, added_cond_kwargs=added_cond_kwargs).sample

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The released flat layout: `image_proj.*` and `ip_adapter.<2n+1>.to_{k,v}_ip.weight`."""
        out = {f"image_proj.{k}": v for k, v in self.image_proj_model.state_dict().items()}
        out.update({f"ip_adapter.{k}": v for k, v in self.adapter_modules.state_dict().items()})
        return out


def _projection(kind: str, base: BaseModel, encoder: ImageEncoder, tokens: int, resampler_dim: int) -> nn.Module:
    cross = base.cross_attention_dim
    if kind == "base":
        return ImageProjModel(cross, encoder.embeds_width, tokens)
    dim = resampler_dim or PLUS_DIM.get(cross, cross)
    heads = max(1, dim // RESAMPLER_HEAD_DIM)
    return Resampler(dim=dim, depth=RESAMPLER_DEPTH, heads=heads, num_queries=tokens,
                     embedding_dim=encoder.hidden_width, output_dim=cross)


def build_adapter(base: BaseModel, encoder: ImageEncoder, kind: str, tokens: int, resampler_dim: int = 0,
                  seed: int = 0) -> TrainableAdapter:
    """A freshly initialised adapter for `base` (processors installed on its UNet): default PyTorch init for the
    projection (Resampler latents randn / sqrt(D)), `to_k_ip` / `to_v_ip` copied from each layer's `to_k` / `to_v`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projection = _projection(kind, base, encoder, tokens, resampler_dim)
    layers = initial_layer_weights(base.unet)
    install_processors(base.unet, layers, tokens)
    return TrainableAdapter(projection, layers, kind, base.unet)


def _fit_problem(spec, module: TrainableAdapter, encoder: ImageEncoder) -> str | None:
    """Why an adapter described by `spec` cannot initialise `module` with this image encoder, or None."""
    kind, layers = module.kind, len(module.adapter_modules.ip_indices)
    if spec.projection is not KIND_PROJECTION[kind]:
        return f"it is a {spec.kind} adapter ({spec.projection.value}); --kind {kind} trains a " \
               f"{KIND_PROJECTION[kind].value}"
    width = encoder.embeds_width if kind == "base" else encoder.hidden_width
    if spec.clip_width != width:
        output = KIND_CLIP_OUTPUT[kind]
        return (f"it expects {encoder_name(output, spec.clip_width)} ({output.value} width {spec.clip_width}) but the "
                f"image encoder '{encoder.folder}' gives width {width} ({encoder_name(output, width)})")
    if spec.num_layers != layers:
        return f"it has {spec.num_layers} cross-attention layers but the UNet has {layers}"
    return None


def init_from_file(module: TrainableAdapter, path: Path, encoder: ImageEncoder) -> None:
    """Start from an existing adapter file (fine-tuning): it must fit the UNet, the image encoder and the kind."""
    try:
        loaded = load_ip_adapter(path)
    except IPAdapterError as e:
        raise TrainingSetupError(f"--init-adapter: {e}") from e
    problem = _fit_problem(loaded.spec, module, encoder)
    ours = module.official_state_dict()
    theirs = {f"image_proj.{k}": v for k, v in loaded.image_proj.state_dict().items()}
    theirs.update({f"ip_adapter.{k}": v for k, v in loaded.layers.state_dict().items()})
    if problem is None:
        wrong = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
        wrong += sorted(set(theirs) - set(ours))
        if wrong:
            key = wrong[0]
            found = tuple(theirs[key].shape) if key in theirs else "missing"
            needed = tuple(ours[key].shape) if key in ours else "nothing"
            problem = (f"its '{key}' is {found}, this model needs {needed} (check --kind, --num-tokens and "
                       "--resampler-dim)")
    if problem is not None:
        raise TrainingSetupError(f"--init-adapter '{path.name}' cannot start this run: {problem}.")
    with torch.no_grad():
        for key, tensor in ours.items():
            tensor.copy_(theirs[key])
