"""The diffusion transformers the DiT adapters were released for: how many blocks they patch, how wide the blocks
and the image tokens are, and which image encoder (and token count) they were trained with.

The numbers name the real models in messages and docs; detection and model checks read every size off the tensors
(so tiny test models work), except the encoder token counts, which tell encoders of the same width apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..layout import BaseFamily

#: The host's dit replace key for the blocks both families patch: `("double_block", i)`.
BLOCK_KEY = "double_block"


@dataclass(frozen=True)
class DiTLayout:
    """One DiT family as released.

    Attributes:
        family: the adapter family.
        model_name: what users call the base model.
        num_blocks: blocks carrying adapter weights (FLUX.1: the double blocks; SD3.5: every joint block).
        hidden_size: the blocks' width (rows of `to_k_ip`).
        head_dim: attention head width.
        token_width: width of the adapter's image tokens.
        encoder: the image encoder the adapter was trained with.
        encoder_tokens: tokens of that encoder's hidden states (ViT-L/14 at 224 px: 257; SigLIP at 384 px: 729).
    """

    family: BaseFamily
    model_name: str
    num_blocks: int
    hidden_size: int
    head_dim: int
    token_width: int
    encoder: str
    encoder_tokens: int


FLUX_LAYOUT = DiTLayout(BaseFamily.FLUX, "FLUX.1-dev", 19, 3072, 128, 4096, "ViT-L/14", 257)
SD35_LARGE_LAYOUT = DiTLayout(BaseFamily.SD35_LARGE, "SD3.5 Large", 38, 2432, 64, 2432, "SigLIP so400m/14-384", 729)
DIT_LAYOUTS = {layout.family: layout for layout in (FLUX_LAYOUT, SD35_LARGE_LAYOUT)}
