"""Encoding a long reference video in chunks: peak tensor memory is the outputs plus one chunk's working set, however
many frames there are (256 frames, 16 per pass), measured deterministically as bytes of live tensor storage
(tests/memory_tracking.py), not as time. The same frames in one pass need many times more: the measurement can tell.
The ratios at ViT-H widths are in benchmarks/sections/animation.py."""

from __future__ import annotations

import torch

from tests.host.ipa_setup import reference_images
from tests.memory_tracking import PeakTensorMemory, tensor_bytes
from tests.numerics import assert_relative_close

FRAMES, BATCH = 256, 16
#: "A small multiple of one chunk": the working set beyond the outputs, against one chunk encoded alone.
CHUNK_MULTIPLE = 2
#: Encoding every frame in one pass holds at least this many chunks' working sets.
ONE_PASS_MULTIPLE = 8


def _measure(module, clip, images: torch.Tensor, batch_size: int) -> tuple[int, int, object]:
    """(peak bytes, bytes of the result, result) of encoding `images` `batch_size` per pass with the pack's
    encode_image_prompt `module`."""
    with torch.inference_mode(), PeakTensorMemory() as memory:
        out = module.encode_images(clip, images, module.Prep(crop="center", batch_size=batch_size))
    return memory.peak, tensor_bytes(out.image_embeds, out.hidden_states), out


def test_peak_memory_grows_with_the_chunk_not_with_the_video(host_pack, tiny_clip_vision) -> None:
    encode_module = host_pack.module.nodes.encode_image_prompt
    clip = tiny_clip_vision.host
    frames = torch.cat([reference_images(BATCH, seed=s) for s in range(FRAMES // BATCH)])
    one_chunk, _, first = _measure(encode_module, clip, frames[:BATCH], BATCH)
    half, half_out, _ = _measure(encode_module, clip, frames[:FRAMES // 2], BATCH)
    full, full_out, chunked = _measure(encode_module, clip, frames, BATCH)
    one_pass, _, whole = _measure(encode_module, clip, frames, 0)
    assert full - full_out <= half - half_out  # the working set beyond the outputs does not grow with the video
    assert full - full_out <= CHUNK_MULTIPLE * one_chunk
    assert one_pass >= ONE_PASS_MULTIPLE * one_chunk
    assert_relative_close(chunked.hidden_states, whole.hidden_states, 1e-5)
    assert torch.equal(chunked.image_embeds[:BATCH], first.image_embeds)
