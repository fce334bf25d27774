"""`python -m ip_adapter.train.convert CHECKPOINT OUTPUT`: a training checkpoint -> the released adapter format."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import IPAdapterError
from .export import DTYPES, convert_checkpoint

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ip_adapter.train.convert",
        description="Convert an IP-Adapter training checkpoint (the official tutorial scripts' accelerate state with "
                    "unet.* / image_proj_model.* / adapter_modules.*, or a checkpoint-<step> folder of "
                    "python -m ip_adapter.train) to the flat .safetensors format Load IP-Adapter reads.")
    p.add_argument("checkpoint", type=Path, help="checkpoint-<step> folder, or its model.safetensors / "
                   "pytorch_model.bin")
    p.add_argument("output", type=Path, help="the .safetensors file to write (put it in ComfyUI/models/ipadapter)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp16", help="tensor type of the file (default fp16)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    if args.output.suffix.lower() != ".safetensors":
        log.error("the output file must end with .safetensors, got '%s'", args.output)
        return 2
    try:
        spec = convert_checkpoint(args.checkpoint, args.output, args.dtype)
    except IPAdapterError as e:
        log.error("%s", e)
        return 2
    log.info("converted: %s", spec.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
