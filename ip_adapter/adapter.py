"""The loaded adapter: its description, image projection and per-layer weights, built strictly from a file."""

from __future__ import annotations

import os
from functools import partial
from typing import Callable

import torch
from torch import nn

from .checkpoint import CheckpointGroups, read_checkpoint
from .detect import detect
from .dit.joint import JointLayerWeights
from .dit.time_resampler import TimeResampler
from .errors import CheckpointFormatError, IncompatibleEncodingError, IPAdapterError
from .layout import BaseFamily
from .placement import COMPUTE_DTYPES, compute_dtype, run_on
from .projection import FaceIDProjModel, ImageProjModel, MLPProjModel, ProjPlusModel
from .resampler import Resampler
from .spec import ENCODER_FILES, AdapterSpec, ClipOutput, ProjectionType, encoder_name
from .weights import LayerWeights, split_lora

_PROJECTIONS: dict[ProjectionType, type[nn.Module]] = {
    ProjectionType.IMAGE_PROJ: ImageProjModel,
    ProjectionType.MLP: MLPProjModel,
    ProjectionType.RESAMPLER: Resampler,
    ProjectionType.FACEID_MLP: FaceIDProjModel,
    ProjectionType.FACEID_PLUS: ProjPlusModel,
    ProjectionType.TIME_RESAMPLER: TimeResampler,
}
#: Per-layer weights by family; the UNet families (and XLabs' FLUX.1 adapters, with biases) use LayerWeights.
_LAYER_WEIGHTS: dict[BaseFamily, type[nn.Module]] = {BaseFamily.SD35_LARGE: JointLayerWeights}


def _stored(t: torch.Tensor, dtype: torch.dtype | None, device: torch.device | str) -> torch.Tensor:
    target = dtype if dtype is not None else (t.dtype if t.dtype in COMPUTE_DTYPES else torch.float32)
    return t.to(device=device, dtype=target)


def _load_strict(module: nn.Module, sd: dict[str, torch.Tensor], name: str, group: str) -> None:
    try:
        module.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointFormatError(
            f"'{name}': the '{group}' group does not match its detected layout: {str(e).splitlines()[-1].strip()} "
            "The file is corrupt or a non-standard export; use an official file."
        ) from e


def _build(make: Callable[[], nn.Module], name: str, what: str) -> nn.Module:
    """Build a module on the meta device; a key its builder needs but the file lacks becomes a format error."""
    try:
        with torch.device("meta"):
            return make()
    except KeyError as e:
        raise CheckpointFormatError(
            f"'{name}': the {what} lacks key '{e.args[0]}'. The file is incomplete or a non-standard export; "
            "download the official file again."
        ) from e


class IPAdapter(nn.Module):
    """An IP-Adapter checkpoint ready to compute image tokens and per-layer image keys/values."""

    def __init__(self, spec: AdapterSpec, image_proj: nn.Module, layers: LayerWeights | JointLayerWeights, name: str,
                 lora: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.spec, self.name = spec, name
        self.image_proj = image_proj
        self.layers = layers
        #: FaceID LoRA tensors under their file keys ("<n>.to_q_lora.down.weight", ...), file dtype, on the CPU;
        #: empty for other kinds. Not a parameter: the host's LoRA loader applies them to the UNet.
        self.lora: dict[str, torch.Tensor] = dict(lora or {})

    @classmethod
    def from_groups(
        cls, groups: CheckpointGroups, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
    ) -> IPAdapter:
        """Detect, build on the meta device, then adopt the file's tensors (no further copies).

        Args:
            dtype: the storage dtype; None keeps the file's (float32 for storage-only types), so loading costs no
                more than reading the file. The math casts to its compute dtype per call (placement.py).
        """
        spec = detect(groups.image_proj, groups.ip_adapter, groups.name)
        ip_layers, lora = split_lora(groups.ip_adapter)
        cast = {g: {k: _stored(v, dtype, device) for k, v in sd.items()}
                for g, sd in (("image_proj", groups.image_proj), ("ip_adapter", ip_layers))}
        image_proj = _build(lambda: _PROJECTIONS[spec.projection].from_state_dict(cast["image_proj"]),
                            groups.name, f"{spec.projection.value} projection ('image_proj' group)")
        layer_class = _LAYER_WEIGHTS.get(spec.family, LayerWeights)
        layers = _build(lambda: layer_class.from_state_dict(cast["ip_adapter"]), groups.name, "'ip_adapter' group")
        _load_strict(image_proj, cast["image_proj"], groups.name, "image_proj")
        _load_strict(layers, cast["ip_adapter"], groups.name, "ip_adapter")
        return cls(spec, image_proj, layers, groups.name, lora).requires_grad_(False).eval()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_clip_input(self, features: torch.Tensor | None, which: ClipOutput) -> None:
        """Raise IncompatibleEncodingError unless `features` is the CLIP output of the width this adapter needs."""
        spec = self.spec
        expected = encoder_name(which, spec.clip_width)
        fix = f"Load {ENCODER_FILES.get(expected, 'the matching model')} in the CLIP Vision loader"
        if features is None:
            raise IncompatibleEncodingError(
                f"'{self.name}' ({spec.kind}) needs the CLIP {which.value}, but the image prompt has none. "
                "Encode the images again with Encode Image Prompt."
            )
        if features.shape[-1] != spec.clip_width:
            found = encoder_name(which, features.shape[-1])
            raise IncompatibleEncodingError(
                f"'{self.name}' expects images encoded with {expected} ({which.value} width {spec.clip_width}), "
                f"but the image prompt was encoded with {found} (width {features.shape[-1]}). {fix}."
            )

    def project(
        self, clip: torch.Tensor | None = None, face_id: torch.Tensor | None = None, s_scale: float = 1.0,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Image tokens for N images, computed on `device` (default: where the weights are) in its compute dtype
        (float32 on the CPU); the weights are cast for the call only, so a partially loaded adapter works too.

        Args:
            clip: the CLIP output the adapter consumes: (N, P) image_embeds or (N, T, H) hidden states.
            face_id: ArcFace embeddings for FaceID models: (N, 512), or (N, n, 512) for portrait models.
            s_scale: FaceID PlusV2 shortcut scale.

        Returns:
            Tokens in the compute dtype. Shape: (N, num_tokens, cross_attention_dim).
        """
        spec = self.spec
        if spec.projection is ProjectionType.TIME_RESAMPLER:
            raise IPAdapterError(f"'{self.name}' makes timestep-dependent tokens; project them with "
                                 "ip_adapter.dit.tokens.TimedTokens, not IPAdapter.project")
        device = torch.device(device) if device is not None else self.device
        dtype = compute_dtype(device, self.dtype)
        if spec.clip_output is not None:
            self.check_clip_input(clip, spec.clip_output)
        if spec.is_faceid and face_id is None:
            raise IncompatibleEncodingError(f"'{self.name}' ({spec.kind}) needs a face ID embedding.")
        run = partial(run_on, self.image_proj, device, dtype)
        if spec.projection is ProjectionType.FACEID_PLUS:
            return run(face_id, clip, shortcut=spec.shortcut, s_scale=s_scale)
        if spec.projection is ProjectionType.RESAMPLER and spec.is_faceid:
            return run(face_id.reshape(face_id.shape[0], -1, spec.face_id_dim))
        return run(face_id if spec.is_faceid else clip)

    def project_kv(self, index: int, tokens: torch.Tensor, wanted: torch.dtype | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image keys and values of layer `index`: (B, T, C) -> two (B, T, width)."""
        return self.layers.project_kv(index, tokens, wanted)


def load_ip_adapter(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> IPAdapter:
    """Read, validate and build the adapter stored at `path`; every failure is a CheckpointFormatError naming it."""
    return IPAdapter.from_groups(read_checkpoint(path), dtype=dtype, device=device)
