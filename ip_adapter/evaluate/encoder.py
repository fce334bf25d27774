"""CLIP embeddings for the metrics: a transformers `CLIPModel` (text and vision towers) from a local folder.

The paper used OpenAI CLIP ViT-L/14 (`openai/clip-vit-large-patch14`); any other CLIP gives numbers that are not
comparable with its Table 1, which is said in the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingSetupError
from ..train.deps import require
from ..train.sources import open_image

log = logging.getLogger(__name__)

#: OpenAI CLIP ViT-L/14 (224 px): what §4.2.1 evaluates with.
VIT_L14 = {"vision hidden size": 1024, "vision layers": 24, "patch size": 14, "image size": 224,
           "projection dim": 768}


@dataclass
class ClipScorer:
    """A frozen CLIPModel with its tokenizer and image processor."""

    folder: Path
    model: Any
    tokenizer: Any
    processor: Any
    device: torch.device

    def architecture(self) -> dict[str, int]:
        vision = self.model.config.vision_config
        return {"vision hidden size": vision.hidden_size, "vision layers": vision.num_hidden_layers,
                "patch size": vision.patch_size, "image size": vision.image_size,
                "projection dim": self.model.config.projection_dim}

    @property
    def is_paper_encoder(self) -> bool:
        return self.architecture() == VIT_L14

    @torch.no_grad()
    def images(self, paths: list[Path], batch_size: int = 32) -> torch.Tensor:
        """Projected image embeddings. Shape: (len(paths), projection dim), float32."""
        out = []
        for start in range(0, len(paths), batch_size):
            images = [open_image(p) for p in paths[start: start + batch_size]]
            pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            out.append(self.model.visual_projection(pooled).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def texts(self, captions: list[str], batch_size: int = 64) -> torch.Tensor:
        """Projected text embeddings (captions truncated to CLIP's 77 tokens). Shape: (len(captions), dim)."""
        out = []
        for start in range(0, len(captions), batch_size):
            tokens = self.tokenizer(captions[start: start + batch_size], padding=True, truncation=True,
                                    max_length=self.tokenizer.model_max_length, return_tensors="pt").to(self.device)
            pooled = self.model.text_model(input_ids=tokens.input_ids,
                                           attention_mask=tokens.attention_mask).pooler_output
            out.append(self.model.text_projection(pooled).float().cpu())
        return torch.cat(out)


def load_scorer(folder: Path, device: str = "cpu") -> ClipScorer:
    """Load a full CLIP model (text + vision + projections) from `folder`; nothing is downloaded."""
    if not (folder / "config.json").is_file():
        raise TrainingSetupError(f"CLIP folder '{folder}' has no config.json; point --clip to a local copy of "
                                 "openai/clip-vit-large-patch14 (model, tokenizer and preprocessor files).")
    transformers = require("transformers", "Evaluation")
    try:
        model, info = transformers.CLIPModel.from_pretrained(folder, output_loading_info=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        processor = transformers.CLIPImageProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise TrainingSetupError(f"'{folder}' cannot be loaded as a CLIP model with tokenizer and image processor: "
                                 f"{str(e).splitlines()[0]}") from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise TrainingSetupError(f"'{folder}' is not a complete CLIP model (text and vision): {len(missing)} weights "
                                 f"missing, e.g. '{missing[0]}'.")
    scorer = ClipScorer(folder, model.eval().requires_grad_(False).to(device), tokenizer, processor,
                        torch.device(device))
    if not scorer.is_paper_encoder:
        log.warning("'%s' is not CLIP ViT-L/14 (%s): the scores are not comparable with the paper's Table 1",
                    folder, scorer.architecture())
    return scorer
