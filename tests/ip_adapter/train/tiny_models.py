"""Tiny random diffusers base models (SD1.5- and SDXL-shaped) and a tiny CLIP image encoder, written as local
folders in the layouts the trainer reads. Only widths are tiny: block types, res blocks per level and transformer
depths are the real ones, so the UNets have the real 16 / 70 cross-attention layers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SD15, SDXL = "sd15", "sdxl"
CROSS_DIM = 16
#: Resolution of the tests' training images: the 2-level VAE gives 8x8 latents.
RESOLUTION = 16
CLIP_IMAGE_SIZE = 28  # 2x2 patches of 14 px + CLS = 5 tokens
CLIP_CONFIG = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                   image_size=CLIP_IMAGE_SIZE, projection_dim=8, hidden_act="quick_gelu")
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    SD15: dict(block_out_channels=(8, 16, 16, 16), attention_head_dim=2,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    SDXL: dict(block_out_channels=(8, 16, 16), attention_head_dim=2, use_linear_projection=True,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
               transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time", addition_time_embed_dim=4,
               projection_class_embeddings_input_dim=8 + 6 * 4),
}
#: One text encoder of CROSS_DIM (SD1.5), or two whose widths add up to it (SDXL, the second with projection 8).
TEXT_WIDTHS = {SD15: (CROSS_DIM,), SDXL: (8, 8)}
ATTN2_LAYERS = {SD15: 16, SDXL: 70}


def tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary without merges: every byte alone and at a word's end, plus CLIP's specials."""
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)] + [chr(c) for c in range(256, 289)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return {t: i for i, t in enumerate(tokens)}, []


def _tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _text_encoder(width: int, projection: bool, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
                            vocab_size=len(tiny_vocab()[0]), max_position_embeddings=77, projection_dim=8,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def tiny_unet(kind: str, seed: int = 0, **overrides: Any):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    config = dict(sample_size=RESOLUTION // 2, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=4,
                  cross_attention_dim=CROSS_DIM, **UNET_CONFIGS[kind])
    return UNet2DConditionModel(**{**config, **overrides}).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=RESOLUTION).eval()


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         steps_offset=1, clip_sample=False)


def write_base_model(folder: Path, kind: str, seed: int = 0, unet=None) -> Path:
    """A diffusers pipeline folder (what save_pretrained writes) with tiny random weights."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    widths = TEXT_WIDTHS[kind]
    encoders = [_text_encoder(w, projection=i == 1, seed=seed + 10 + i) for i, w in enumerate(widths)]
    parts = dict(vae=_vae(seed + 1), unet=unet if unet is not None else tiny_unet(kind, seed + 2),
                 scheduler=_scheduler(), text_encoder=encoders[0], tokenizer=_tokenizer())
    if kind == SDXL:
        pipe = StableDiffusionXLPipeline(text_encoder_2=encoders[1], tokenizer_2=_tokenizer(), **parts)
    else:
        pipe = StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                       **parts)
    pipe.save_pretrained(folder)
    return folder


def write_image_encoder(folder: Path, seed: int = 0, **overrides: Any) -> Path:
    """A CLIPVisionModelWithProjection folder with its CLIPImageProcessor config."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(**{**CLIP_CONFIG, **overrides})
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder)
    size = config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def write_images(folder: Path, captions: dict[str, str], size: tuple[int, int] = (24, 20), seed: int = 0) -> Path:
    """Random RGB PNGs (width, height = `size`) with same-named .txt captions."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for stem, caption in captions.items():
        pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(caption)
    return folder


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
