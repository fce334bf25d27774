"""Apply IP-Adapter Batch in the host: with N images and N latent frames, frame i's prediction equals Apply
IP-Adapter with image i alone on a one-frame latent; frame weights scale exactly (weight x entry, outside the
attention under "V only", inside it under K+V); fewer images than frames repeat the last; masks map frame by frame;
each frame's image K/V is computed once, not per step. Also the Frame Weights node as the executor runs it."""

from __future__ import annotations

import pytest
import torch

from tests.host.ipa_setup import SIGMA, PackNodes, adapter_groups, apply, reference_images, text_conds, write_adapter
from tests.host.predict import host_eps
from tests.numerics import assert_relative_close

FRAMES = 3
BATCH_BOUND = 1e-5  # the same rows computed in a batch of frames or alone (float32, different GEMM blocking)
LATENT_SIDE = 8


@pytest.fixture(scope="module")
def setup(host_pack, tiny_sd15, tiny_clip_vision, host_models):
    nodes = PackNodes.of(host_pack)
    groups = adapter_groups("plus", tiny_sd15, tiny_clip_vision, seed=31)
    adapter = nodes.load.load(write_adapter(host_models, groups, "batch-plus_sd15.safetensors"))[0]
    batch = host_pack.node_class_mappings["ApplyIPAdapterBatch"]()
    images = reference_images(FRAMES, seed=40)
    return nodes, batch, adapter, images, tiny_sd15


def _encode(nodes, clip, images):
    with torch.inference_mode():
        return nodes.encode.encode(clip.host, images, "center")[0]


def _frames(n: int, seed: int = 50) -> torch.Tensor:
    return torch.randn(n, 4, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(seed))


def _eps(model, unet, x, with_uncond: bool = False):
    """[cond rows] or [cond rows, uncond rows] (the unconditional rows attend to the negative image)."""
    cond, uncond = text_conds(unet)
    return host_eps(model, x, SIGMA, cond, uncond if with_uncond else None)


def _batch(batch, model, adapter, prompt, weight=1.0, scaling="V only", mask=None, frame_weights=None):
    with torch.inference_mode():
        return batch.apply(model, adapter, prompt, weight, "linear", 0.0, 1.0, scaling, mask, frame_weights)[0]


def _single_frame_eps(nodes, clip, unet, adapter, image, x_frame, weight, scaling="V only", mask=None,
                      with_uncond: bool = False):
    """Apply IP-Adapter with one image on a one-frame latent (weight 0: the unpatched model)."""
    model = apply(nodes, unet.patcher, adapter, _encode(nodes, clip, image), weight, scaling=scaling, attn_mask=mask)
    return _eps(model, unet, x_frame, with_uncond)


def _assert_frames_match(batched, singles) -> None:
    for i, single in enumerate(singles):
        for side in range(len(batched)):  # cond rows (, uncond rows)
            assert_relative_close(batched[side][i:i + 1], single[side], BATCH_BOUND)


def test_frame_i_equals_image_i_alone(setup, tiny_clip_vision) -> None:
    nodes, batch, adapter, images, unet = setup
    x = _frames(FRAMES)
    model = _batch(batch, unet.patcher, adapter, _encode(nodes, tiny_clip_vision, images), 0.8)
    batched = _eps(model, unet, x, with_uncond=True)
    singles = [_single_frame_eps(nodes, tiny_clip_vision, unet, adapter, images[i:i + 1], x[i:i + 1], 0.8,
                                 with_uncond=True) for i in range(FRAMES)]
    _assert_frames_match(batched, singles)
    assert (batched[0][0] - batched[0][1]).abs().max() > 1e-2  # frames differ


@pytest.mark.parametrize("scaling", ["V only", "K+V"])
def test_frame_weights_scale_each_frame_exactly(setup, tiny_clip_vision, scaling: str) -> None:
    nodes, batch, adapter, images, unet = setup
    x = _frames(FRAMES, seed=51)
    frame_weights = [1.0, 0.5, 0.0]
    model = _batch(batch, unet.patcher, adapter, _encode(nodes, tiny_clip_vision, images), 0.8, scaling,
                   frame_weights=frame_weights)
    singles = [_single_frame_eps(nodes, tiny_clip_vision, unet, adapter, images[i:i + 1], x[i:i + 1],
                                 0.8 * frame_weights[i], scaling) for i in range(FRAMES)]
    _assert_frames_match(_eps(model, unet, x), singles)


def test_fewer_images_than_frames_repeat_the_last(setup, tiny_clip_vision) -> None:
    nodes, batch, adapter, images, unet = setup
    x = _frames(4, seed=52)
    model = _batch(batch, unet.patcher, adapter, _encode(nodes, tiny_clip_vision, images[:2]), 1.0,
                   frame_weights=[0.5, 1.5])  # fewer weights than frames: the last one repeats too
    first = _single_frame_eps(nodes, tiny_clip_vision, unet, adapter, images[:1], x[:1], 0.5)
    second = apply(nodes, unet.patcher, adapter, _encode(nodes, tiny_clip_vision, images[1:2]), 1.5)
    rest = _eps(second, unet, x[1:])  # frames 1, 2, 3: image 1 at weight 1.5, one batch
    _assert_frames_match(_eps(model, unet, x), [first] + [[rest[0][i:i + 1]] for i in range(3)])


def test_masks_map_frame_by_frame(setup, tiny_clip_vision) -> None:
    nodes, batch, adapter, images, unet = setup
    x = _frames(FRAMES, seed=53)
    masks = torch.zeros(FRAMES, 64, 64)
    for i in range(FRAMES):
        masks[i, :, i * 20:(i + 1) * 24] = 1.0
    model = _batch(batch, unet.patcher, adapter, _encode(nodes, tiny_clip_vision, images), 1.0, mask=masks)
    singles = [_single_frame_eps(nodes, tiny_clip_vision, unet, adapter, images[i:i + 1], x[i:i + 1], 1.0,
                                 mask=masks[i:i + 1]) for i in range(FRAMES)]
    _assert_frames_match(_eps(model, unet, x), singles)


def test_image_kv_is_computed_once_per_frame_not_per_step(setup, tiny_clip_vision, host_pack, monkeypatch) -> None:
    """Apply computes every patched layer's K/V once, for every frame's image at once; sampling computes none."""
    import comfy.sample

    nodes, batch, adapter, images, unet = setup
    calls: list[int] = []
    adapter_cls = type(adapter.adapter)
    original = adapter_cls.project_kv
    monkeypatch.setattr(adapter_cls, "project_kv",
                        lambda self, index, tokens, *a, **k: calls.append(tokens.shape[0]) or original(
                            self, index, tokens, *a, **k))
    model = _batch(batch, unet.patcher, adapter, _encode(nodes, tiny_clip_vision, images), 1.0)
    layers = len(model.model_options["transformer_options"]["patches_replace"]["attn2"])
    assert len(calls) == layers  # once per layer, at Apply, for the whole batch
    assert set(calls) == {FRAMES + 1}  # every frame's image plus the one shared reference negative
    cond, uncond = text_conds(unet)
    for _ in range(2):  # two runs of two steps
        with torch.inference_mode():
            comfy.sample.sample(model, _frames(FRAMES), 2, 1.0, "euler", "normal", cond.comfy(), uncond.comfy(),
                                torch.zeros(FRAMES, 4, LATENT_SIDE, LATENT_SIDE), seed=0, disable_pbar=True)
    assert len(calls) == layers  # not per step, not per run


def test_frame_weights_node_in_the_executor(host_graph) -> None:
    prompt = {
        "1": {"class_type": "FrameWeights", "inputs": {"weights": "0.0, 1.0", "timing": "ease in", "frames": 5,
                                                        "start_frame": 0, "end_frame": 9999, "add_starting_frames": 1,
                                                        "add_ending_frames": 2, "seed": 0}},
        "2": {"class_type": "IPAHarnessSink", "inputs": {"value": ["1", 1]}},
    }
    result = host_graph.run(prompt)
    weights, inverted, total = (result.output("1", slot) for slot in range(3))
    assert total == len(weights) == 8 and weights[0] == weights[1] == 0.0 and weights[-1] == weights[-2] == 1.0
    assert weights[2] < 0.25 and all(abs(a + b - 1.0) < 1e-12 for a, b in zip(weights, inverted))
