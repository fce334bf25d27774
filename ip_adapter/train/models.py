"""The frozen models of a training run, loaded from local folders and checked to fit together before training.

The base model is a diffusers folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, and for SDXL
`text_encoder_2/`, `tokenizer_2/`); the image encoder is a transformers `CLIPVisionModelWithProjection` folder.
Nothing is downloaded: every path must exist locally.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import TrainingSetupError
from .deps import require

log = logging.getLogger(__name__)

BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_PARTS = ("text_encoder_2", "tokenizer_2")
SDXL_ADDITION = "text_time"
#: SDXL's time ids: original size (2), crop top-left (2), target size (2).
TIME_IDS = 6
CONVERT_HINT = ("A single-file checkpoint can be converted once with diffusers: "
                "StableDiffusionPipeline.from_single_file(path).save_pretrained(folder) "
                "(StableDiffusionXLPipeline for SDXL).")


@dataclass
class BaseModel:
    """The frozen parts of the text-to-image model. `text_encoders` / `tokenizers` have one entry (SD1.5-like) or two
    (SDXL: CLIP ViT-L, then OpenCLIP bigG with projection)."""

    folder: Path
    unet: Any
    vae: Any
    text_encoders: list
    tokenizers: list
    scheduler: Any

    @property
    def is_sdxl(self) -> bool:
        return self.unet.config.addition_embed_type == SDXL_ADDITION

    @property
    def cross_attention_dim(self) -> int:
        return self.unet.config.cross_attention_dim


@dataclass
class ImageEncoder:
    """The frozen CLIP image encoder and its preprocessing (a transformers `CLIPImageProcessor`)."""

    folder: Path
    model: Any
    processor: Any

    @property
    def embeds_width(self) -> int:
        return self.model.config.projection_dim

    @property
    def hidden_width(self) -> int:
        return self.model.config.hidden_size


def _config(folder: Path, part: str) -> dict:
    path = folder / part / "config.json"
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingSetupError(f"'{path}' cannot be read ({e}); the base model folder is incomplete.") from e


def check_base_folder(folder: Path) -> bool:
    """Raise TrainingSetupError unless `folder` looks like a diffusers SD1.5/SDXL folder; returns whether it is SDXL."""
    if folder.is_file():
        raise TrainingSetupError(f"'{folder}' is a file; --pretrained-model needs a diffusers model folder. "
                                 + CONVERT_HINT)
    if not folder.is_dir():
        raise TrainingSetupError(f"base model folder '{folder}' does not exist.")
    sdxl = _config(folder, "unet").get("addition_embed_type") == SDXL_ADDITION if (folder / "unet").is_dir() else False
    missing = [p for p in BASE_PARTS + (SDXL_PARTS if sdxl else ()) if not (folder / p).is_dir()]
    if missing:
        found = sorted(p.name for p in folder.iterdir())[:8]
        listed = ", ".join(f"{p}/" for p in missing)
        raise TrainingSetupError(
            f"'{folder}' is not a diffusers {'SDXL' if sdxl else 'SD'} model folder: it lacks {listed} (found "
            f"{', '.join(found) or 'nothing'}). Expected {', '.join(f'{p}/' for p in BASE_PARTS)} and, for SDXL, "
            f"{', '.join(f'{p}/' for p in SDXL_PARTS)}. {CONVERT_HINT}")
    return sdxl


def _load(make: Callable[[], Any], where: Path, what: str) -> Any:
    """Run a from_pretrained call; missing weights or unreadable files become a TrainingSetupError naming `where`."""
    try:
        loaded = make()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise TrainingSetupError(f"'{where}' cannot be loaded as {what}: {str(e).splitlines()[0]}") from e
    if isinstance(loaded, tuple):  # transformers with output_loading_info=True
        model, info = loaded
        missing = info.get("missing_keys") or []
        if missing:
            raise TrainingSetupError(f"'{where}' is not a complete {what}: {len(missing)} weights are missing, e.g. "
                                     f"'{sorted(missing)[0]}'. Point to the right folder.")
        return model
    return loaded


def load_base_model(folder: Path) -> BaseModel:
    """Load and freeze the base model's parts (fp32, CPU); then check that they fit together."""
    sdxl = check_base_folder(folder)
    diffusers = require("diffusers", "Training")
    transformers = require("transformers", "Training")
    unet = _load(lambda: diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"), folder / "unet",
                 "a diffusers UNet2DConditionModel")
    vae = _load(lambda: diffusers.AutoencoderKL.from_pretrained(folder / "vae"), folder / "vae", "a diffusers VAE")
    encoders = [_load(lambda: transformers.CLIPTextModel.from_pretrained(folder / "text_encoder",
                                                                        output_loading_info=True),
                      folder / "text_encoder", "a CLIP text encoder")]
    if sdxl:
        encoders.append(_load(lambda: transformers.CLIPTextModelWithProjection.from_pretrained(
            folder / "text_encoder_2", output_loading_info=True), folder / "text_encoder_2",
            "a CLIP text encoder with projection"))
    tokenizers = [_load(lambda p=p: transformers.AutoTokenizer.from_pretrained(folder / p), folder / p, "a tokenizer")
                  for p in ("tokenizer", "tokenizer_2")[: len(encoders)]]
    scheduler = _load(lambda: diffusers.DDPMScheduler.from_pretrained(folder / "scheduler"), folder / "scheduler",
                      "a scheduler config")
    for module in [unet, vae, *encoders]:
        module.requires_grad_(False).eval()
    model = BaseModel(folder, unet, vae, encoders, tokenizers, scheduler)
    check_base_model(model)
    return model


def check_base_model(model: BaseModel) -> None:
    """The parts must agree on widths: text encoders -> UNet context, VAE latents -> UNet input, SDXL pooled text
    and time ids -> the UNet's added embedding."""
    cfg, folder = model.unet.config, model.folder
    if not isinstance(cfg.cross_attention_dim, int):
        raise TrainingSetupError(f"'{folder}': per-block cross-attention widths ({cfg.cross_attention_dim}) are not "
                                 "supported; the adapter's image tokens need one context width.")
    if cfg.encoder_hid_dim is not None:
        raise TrainingSetupError(f"'{folder}': the UNet projects its context first (encoder_hid_dim "
                                 f"{cfg.encoder_hid_dim}); such models are not supported by this trainer.")
    text_width = sum(e.config.hidden_size for e in model.text_encoders)
    if text_width != cfg.cross_attention_dim:
        widths = " + ".join(str(e.config.hidden_size) for e in model.text_encoders)
        raise TrainingSetupError(f"'{folder}': the text encoders give {widths} = {text_width} features but the UNet's "
                                 f"cross-attention expects {cfg.cross_attention_dim}; the folder mixes models.")
    if model.vae.config.latent_channels != cfg.in_channels:
        raise TrainingSetupError(f"'{folder}': the VAE has {model.vae.config.latent_channels} latent channels but the "
                                 f"UNet takes {cfg.in_channels}; the folder mixes models (or the UNet is an "
                                 "inpainting UNet, which this trainer does not support).")
    if model.is_sdxl:
        pooled = model.text_encoders[-1].config.projection_dim
        expected = pooled + TIME_IDS * cfg.addition_time_embed_dim
        if expected != cfg.projection_class_embeddings_input_dim:
            raise TrainingSetupError(
                f"'{folder}': the SDXL UNet's added embedding takes {cfg.projection_class_embeddings_input_dim} "
                f"features, but the pooled text ({pooled}) and time ids ({TIME_IDS} x {cfg.addition_time_embed_dim}) "
                f"give {expected}; the folder mixes models.")


def load_image_encoder(folder: Path) -> ImageEncoder:
    """Load and freeze a CLIPVisionModelWithProjection with its preprocessing; the preprocessing must produce the
    image size the encoder was built for."""
    if not (folder / "config.json").is_file():
        raise TrainingSetupError(f"image encoder folder '{folder}' has no config.json; point --image-encoder to a "
                                 "transformers CLIPVisionModelWithProjection folder (e.g. h94/IP-Adapter's "
                                 "models/image_encoder).")
    transformers = require("transformers", "Training")
    model = _load(lambda: transformers.CLIPVisionModelWithProjection.from_pretrained(folder, output_loading_info=True),
                  folder, "a CLIP vision model with projection")
    model.requires_grad_(False).eval()
    size = model.config.image_size
    if (folder / "preprocessor_config.json").is_file():
        processor = transformers.CLIPImageProcessor.from_pretrained(folder)
    else:
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": size},
                                                    crop_size={"height": size, "width": size})
    crop = processor.crop_size["height"]
    if crop != size:
        raise TrainingSetupError(f"'{folder}': preprocessor_config.json crops to {crop} px but the encoder was built "
                                 f"for {size} px images; the folder mixes models.")
    return ImageEncoder(folder, model, processor)
