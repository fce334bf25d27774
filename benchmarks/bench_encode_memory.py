"""Peak tensor memory of encoding a long reference video: `batch_size` frames per pass against every frame in one
pass, side by side in one process, with the host's CLIP vision model at ViT-H/14 widths (hidden 1280, 16 heads,
257 tokens per frame; random weights). Peak memory is counted as bytes of live tensor storage
(tests/memory_tracking.py), so the numbers are exact and machine independent; times are printed for orientation only.

Depth does not change the peak (layers run one after another and only the penultimate states are kept), so the
encoder has `--layers` layers (default 2) instead of 32 to keep the run short.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/bench_encode_memory.py [--frames 256] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.host import comfy_env  # noqa: E402
from tests.memory_tracking import PeakTensorMemory, tensor_bytes  # noqa: E402

log = logging.getLogger("bench")
MB = 1 << 20
FRAME_SIDE = 256  # input frames, resized to 224 by the encoder's preprocessing


def vit_h_encoder(layers: int, scratch: Path):
    """The host's ClipVisionModel with ViT-H/14 widths and `layers` layers, filled with small random weights."""
    import comfy.clip_vision

    config = json.loads((Path(comfy.clip_vision.__file__).parent / "clip_vision_config_h.json").read_text())
    config["num_hidden_layers"] = layers
    path = scratch / "vit_h_shallow.json"
    path.write_text(json.dumps(config))
    encoder = comfy.clip_vision.ClipVisionModel(str(path))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in encoder.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return encoder


def measure(encode_images, encoder, frames: torch.Tensor, batch_size: int) -> tuple[int, int, float]:
    """(peak bytes, bytes of the encodings, seconds) of one encoding."""
    start = time.perf_counter()
    with torch.inference_mode(), PeakTensorMemory() as memory:
        out = encode_images(encoder, frames, True, batch_size)
    return memory.peak, tensor_bytes(out.image_embeds, out.hidden_states), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    location = comfy_env.locate_comfyui()
    if location.path is None:
        sys.exit(f"No ComfyUI found: {comfy_env.HOW_TO_POINT}.")
    scratch = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    comfy_env.start_host(location, scratch)
    encode_images = comfy_env.load_pack().module.nodes.encode_image_prompt.encode_images
    encoder = vit_h_encoder(args.layers, scratch)
    frames = torch.rand(args.frames, FRAME_SIDE, FRAME_SIDE, 3, generator=torch.Generator().manual_seed(1))
    measure(encode_images, encoder, frames[:2], 2)  # warm-up
    one_chunk, _, t_chunk = measure(encode_images, encoder, frames[:args.batch_size], args.batch_size)
    chunked, outputs, t_chunked = measure(encode_images, encoder, frames, args.batch_size)
    one_pass, _, t_pass = measure(encode_images, encoder, frames, 0)
    log.info("ViT-H/14 widths, %d layers, %d frames of %dx%d", args.layers, args.frames, FRAME_SIDE, FRAME_SIDE)
    log.info("peak, one chunk of %d frames:        %8.1f MB  (%.1f s)", args.batch_size, one_chunk / MB, t_chunk)
    log.info("peak, %d frames, %d per pass:      %8.1f MB  (%.1f s)", args.frames, args.batch_size, chunked / MB,
             t_chunked)
    log.info("peak, %d frames in one pass:        %8.1f MB  (%.1f s)", args.frames, one_pass / MB, t_pass)
    log.info("encodings of %d frames (the result): %8.1f MB", args.frames, outputs / MB)
    log.info("chunked peak beyond the result / one chunk's peak: %.2f", (chunked - outputs) / one_chunk)
    log.info("one-pass peak / chunked peak: %.1fx", one_pass / chunked)

if __name__ == "__main__":
    main()
