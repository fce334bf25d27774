"""Command line of `python -m ip_adapter.train` (and `accelerate launch -m ip_adapter.train`)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..errors import IPAdapterError
from .config import DEFAULT_TOKENS, EXPORT_DTYPES, KINDS, MIXED_PRECISION, DataConfig, TrainConfig
from .recipe import DROP_RATE, LEARNING_RATE, WEIGHT_DECAY, DropRates

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
DEFAULTS = TrainConfig.__dataclass_fields__


def _default(name: str):
    return DEFAULTS[name].default


def _inputs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (local folders; nothing is downloaded)")
    g.add_argument("--pretrained-model", type=Path, required=True,
                   help="diffusers folder of the base model (unet/, vae/, text_encoder/, tokenizer/, scheduler/; "
                        "SDXL also text_encoder_2/, tokenizer_2/)")
    g.add_argument("--image-encoder", type=Path, required=True,
                   help="transformers CLIPVisionModelWithProjection folder, e.g. h94/IP-Adapter models/image_encoder")
    g.add_argument("--init-adapter", type=Path, help="start from this adapter file (fine-tuning) instead of the "
                   "official initialisation")
    d = p.add_argument_group("data (exactly one of --image-folder, --jsonl, --shards)")
    d.add_argument("--image-folder", type=Path, help="images, each with a same-named .txt caption")
    d.add_argument("--jsonl", type=Path, help='JSON-lines (or JSON list) of {"image_file": ..., "text": ...}')
    d.add_argument("--image-root", type=Path, help="folder the manifest's image_file paths are relative to "
                   "(default: the manifest's folder)")
    d.add_argument("--shards", nargs="+", default=[], help="WebDataset .tar shards: files, folders, globs or brace "
                   "ranges such as 'data/{00000..00099}.tar'")
    d.add_argument("--no-image-check", action="store_true", help="skip opening every image before training")


def _recipe(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("adapter and recipe (defaults: the paper's)")
    g.add_argument("--kind", choices=KINDS, default="base", help="base: ImageProjModel on image_embeds; plus: "
                   "Resampler on the penultimate hidden states")
    g.add_argument("--num-tokens", type=int, default=0, help="image tokens per image (default: "
                   + ", ".join(f"{n} for {k}" for k, n in DEFAULT_TOKENS.items()) + ")")
    g.add_argument("--resampler-dim", type=int, default=0, help="Plus only: Resampler width (default: the context "
                   "width, 1280 for SDXL)")
    g.add_argument("--resolution", type=int, default=_default("resolution"), help="training size (shortest side "
                   "resized, then centre-cropped)")
    g.add_argument("--batch-size", type=int, default=_default("batch_size"), help="images per process and step")
    g.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    g.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    for what in ("image", "text", "both"):
        g.add_argument(f"--drop-{what}", type=float, default=DROP_RATE, help=f"probability of dropping the {what}"
                       if what != "both" else "probability of dropping image and text")


def _schedule(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", type=Path, required=True, help="checkpoints, logs and the exported adapter")
    g.add_argument("--epochs", type=int, default=_default("num_epochs"))
    g.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (overrides --epochs)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1)
    g.add_argument("--mixed-precision", choices=MIXED_PRECISION, help="default: accelerate's config / launch flag")
    g.add_argument("--gradient-checkpointing", action="store_true", help="less memory, slower steps")
    g.add_argument("--checkpoint-every", type=int, default=_default("checkpoint_every"), help="steps between "
                   "checkpoints (each also holds a ready-to-use ip_adapter.safetensors)")
    g.add_argument("--keep-checkpoints", type=int, help="keep only the newest N checkpoints")
    g.add_argument("--resume", nargs="?", const="latest", help="continue from the newest checkpoint in --output-dir "
                   "(or the given checkpoint folder); the data stream continues where it stopped")
    g.add_argument("--seed", type=int, default=_default("seed"))
    g.add_argument("--num-workers", type=int, default=_default("num_workers"), help="data loader workers per process")
    g.add_argument("--shuffle-buffer", type=int, default=_default("shuffle_buffer"), help="shards: samples in the "
                   "shuffle buffer of each worker")
    g.add_argument("--log-every", type=int, default=_default("log_every"), help="steps between log lines")
    g.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (<output-dir>/logs)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--export-name", help="file name of the exported adapter (a .safetensors)")
    g.add_argument("--export-dtype", choices=EXPORT_DTYPES, default="fp16")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ip_adapter.train",
        description="Train an IP-Adapter (base or Plus) for a local SD1.5 / SDXL / custom diffusers model with the "
                    "paper's recipe, and export it for Load IP-Adapter. Several GPUs or machines: "
                    "accelerate launch -m ip_adapter.train ...")
    _inputs(p)
    _recipe(p)
    _schedule(p)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    data = DataConfig(image_folder=args.image_folder, jsonl=args.jsonl, image_root=args.image_root,
                      shards=tuple(args.shards), check_images=not args.no_image_check)
    try:
        drop = DropRates(args.drop_image, args.drop_text, args.drop_both)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return TrainConfig(
        pretrained_model=args.pretrained_model, image_encoder=args.image_encoder, data=data,
        output_dir=args.output_dir, kind=args.kind, num_tokens=args.num_tokens, resampler_dim=args.resampler_dim,
        resolution=args.resolution, batch_size=args.batch_size, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, drop=drop, num_epochs=args.epochs, max_steps=args.max_steps,
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, resume=args.resume, init_adapter=args.init_adapter, seed=args.seed,
        num_workers=args.num_workers, shuffle_buffer=args.shuffle_buffer, log_every=args.log_every,
        tensorboard=args.tensorboard, progress_bar=not args.no_progress, export_name=args.export_name,
        export_dtype=args.export_dtype)


def setup_logging() -> None:
    """INFO on the first process, warnings only on the others (accelerate launch sets RANK)."""
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # loader workers fork after the tokenizers load


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parser().parse_args(argv)
    try:
        from .loop import train

        path = train(config_from_args(args))
    except (IPAdapterError, argparse.ArgumentTypeError) as e:
        log.error("%s", e)
        return EXIT_BAD_INPUT
    log.info("done: %s (copy it to ComfyUI/models/ipadapter)", path)
    return 0
