"""Table 1 of the paper (arXiv 2308.06721v1): CLIP-T and CLIP-I on COCO2017 val, 4 images per prompt (training.md §3).

The numbers are the paper's, copied, never recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    group: str
    method: str
    trainable_params: str
    clip_t: float
    clip_i: float


_SCRATCH, _FINETUNE, _ADAPTERS = "Training from scratch", "Fine-tuning from T2I model", "Adapters"

TABLE1: tuple[PaperRow, ...] = (
    PaperRow(_SCRATCH, "Open unCLIP (karlo)", "893M", 0.608, 0.858),
    PaperRow(_SCRATCH, "Kandinsky-2-1", "1229M", 0.599, 0.855),
    PaperRow(_SCRATCH, "Versatile Diffusion", "860M", 0.587, 0.830),
    PaperRow(_FINETUNE, "SD Image Variations", "860M", 0.548, 0.760),
    PaperRow(_FINETUNE, "SD unCLIP", "870M", 0.584, 0.810),
    PaperRow(_ADAPTERS, "Uni-ControlNet (Global Control)", "47M", 0.506, 0.736),
    PaperRow(_ADAPTERS, "T2I-Adapter (Style)", "39M", 0.485, 0.648),
    PaperRow(_ADAPTERS, "ControlNet Shuffle", "361M", 0.421, 0.616),
    PaperRow(_ADAPTERS, "IP-Adapter", "22M", 0.588, 0.828),
)
PROTOCOL = "COCO2017 val (5,000 image prompts x 4 samples), CLIP ViT-L/14"
