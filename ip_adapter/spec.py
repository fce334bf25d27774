"""What an IP-Adapter checkpoint is, as a frozen description: kind, base family, encoder, tokens, layers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .layout import BaseFamily


class ProjectionType(str, Enum):
    """The image-projection architecture, read off the `image_proj` keys."""

    IMAGE_PROJ = "ImageProjModel"
    MLP = "MLPProjModel"
    RESAMPLER = "Resampler"
    FACEID_MLP = "FaceIDProjModel"
    FACEID_PLUS = "ProjPlusModel"
    TIME_RESAMPLER = "TimeResampler"  # InstantX SD3.5: tokens depend on the timestep


class ClipOutput(str, Enum):
    """Which CLIP-vision output a projection consumes."""

    IMAGE_EMBEDS = "image_embeds"  # pooled, projected CLS: (B, P)
    HIDDEN_STATES = "penultimate_hidden_states"  # hidden_states[-2]: (B, 257, H)


#: Encoder names by (output consumed, its width); the same width means different encoders for the two outputs.
ENCODER_NAMES: dict[tuple[ClipOutput, int], str] = {
    (ClipOutput.IMAGE_EMBEDS, 1024): "ViT-H/14",
    (ClipOutput.IMAGE_EMBEDS, 1280): "ViT-bigG/14",
    (ClipOutput.IMAGE_EMBEDS, 768): "ViT-L/14",
    (ClipOutput.HIDDEN_STATES, 1280): "ViT-H/14",
    (ClipOutput.HIDDEN_STATES, 1664): "ViT-bigG/14",
    (ClipOutput.HIDDEN_STATES, 1024): "ViT-L/14",
    # SigLIP has no projection: its image_embeds is the post-LayerNorm token sequence, as wide as its hidden states.
    (ClipOutput.IMAGE_EMBEDS, 1152): "SigLIP so400m/14-384",
    (ClipOutput.HIDDEN_STATES, 1152): "SigLIP so400m/14-384",
}

#: Suggested CLIP-vision files (models/clip_vision) for each encoder name.
ENCODER_FILES: dict[str, str] = {
    "ViT-H/14": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    "ViT-bigG/14": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors",
    "ViT-L/14": "clip-vit-large-patch14.safetensors",
    "SigLIP so400m/14-384": "sigclip_vision_patch14_384.safetensors",
}
#: Families whose adapters patch DiT blocks rather than UNet cross-attention layers.
DIT_FAMILIES = frozenset({BaseFamily.FLUX, BaseFamily.SD35_LARGE})

FACE_ID_DIM = 512
#: Full-face adapters project every CLIP token of a 224 px ViT/14 image: 16x16 patches + CLS.
CLIP_TOKENS = 257


def encoder_name(output: ClipOutput, width: int) -> str:
    """A readable name of the CLIP vision model whose `output` has `width` features."""
    return ENCODER_NAMES.get((output, width), f"a CLIP vision model with {output.value} width {width}")


@dataclass(frozen=True)
class AdapterSpec:
    """A loaded checkpoint's description, derived from tensor shapes (and, where layouts are identical, the name).

    Attributes:
        kind: "base", "light", "vit-g", "plus", "plus-face", "composition", "full-face", "faceid",
            "faceid-plus", "faceid-plusv2", "faceid-portrait" or "faceid-portrait-unnorm"; for DiT adapters
            "xlabs-v1", "xlabs-v2" (FLUX.1) or "instantx" (SD3.5 Large).
        family: the base model family: from the context width when it is a known one (768 SD1.5, 2048 SDXL), else
            from a standard layer count (16 SD1.5, 70 SDXL), else SD1.5; from the key layout for DiTs.
        projection: the image-projection architecture.
        clip_output: the CLIP output consumed, or None for FaceID models that use only the face embedding.
        clip_width: width of that CLIP output (E), or 0 when there is none.
        face_id_dim: width of the ArcFace input (512) for FaceID models, else 0.
        num_tokens: image tokens per reference image (per face for portrait models).
        num_layers: cross-attention layers carrying `to_k_ip`/`to_v_ip` (DiT blocks for DiT adapters).
        cross_attention_dim: the width the tokens live in (768 SD1.5, 2048 SDXL, 4096 FLUX.1, 2432 SD3.5 Large).
        lora_rank: rank of the embedded FaceID LoRA, or 0.
        shortcut: FaceID PlusV2 adds the ID tokens back after the resampler.
        custom_layout: the layer count is not its family's standard one (16 SD1.5, 70 SDXL): an adapter trained for
            a pruned or distilled UNet, whose layers Apply matches to the model's own cross-attention layers.
    """

    kind: str
    family: BaseFamily
    projection: ProjectionType
    clip_output: ClipOutput | None
    clip_width: int
    face_id_dim: int
    num_tokens: int
    num_layers: int
    cross_attention_dim: int
    lora_rank: int = 0
    shortcut: bool = False
    custom_layout: bool = False

    @property
    def encoder(self) -> str:
        """The CLIP vision model the adapter expects, e.g. "ViT-H/14" (or "none" for ID-only FaceID)."""
        return encoder_name(self.clip_output, self.clip_width) if self.clip_output else "none"

    @property
    def is_dit(self) -> bool:
        """Whether the adapter patches the blocks of a diffusion transformer (FLUX.1, SD3.5) instead of a UNet."""
        return self.family in DIT_FAMILIES

    @property
    def is_faceid(self) -> bool:
        return self.face_id_dim > 0

    def describe(self) -> str:
        """One line for logs and error messages."""
        encoder = f"{self.encoder} {self.clip_output.value}" if self.clip_output else "face ID only"
        unit = "blocks" if self.is_dit else "layers"
        layers = f"{self.num_layers} {unit}, custom layout" if self.custom_layout else f"{self.num_layers} {unit}"
        return (
            f"{self.family.value} {self.kind} IP-Adapter ({self.projection.value}, {encoder}, "
            f"{self.num_tokens} tokens, {layers})"
        )
