"""Context windows in the host: under ContextWindowsManual (windows with overlap, and looped windows that wrap
around) and AnimateDiff-Evolved's sub-batches (`ad_params["sub_idxs"]`), each frame's reference image, weight and
mask are those of its index in the whole batch, never its position inside the window.

Two proofs. The SD1.5 UNet treats frames independently, so a windowed prediction of every frame must equal the
prediction without windows (any window-relative lookup breaks this for every window but the first). And the patch is
instrumented: RunPlan.prepare is wrapped to record, for every patched layer of every model call inside a window, the
window's global indices and which K/V table row, weight and mask each batch row receives.

The model stacks Apply IP-Adapter Batch (6 images for 8 frames, so the last repeats; 8 frame weights; 8 masks) and a
plain Apply IP-Adapter with 8 per-frame masks (the masks of a single image prompt follow the global frame too).
"""

from __future__ import annotations

import pytest
import torch

from tests.host import context_window_fix
from tests.host.ipa_setup import SIGMA, PackNodes, adapter_groups, apply, reference_images, text_conds, write_adapter
from tests.host.predict import host_eps
from tests.numerics import assert_relative_close

FRAMES, IMAGES = 8, 6
WINDOW, OVERLAP = 4, 1
LATENT_SIDE = 8
FRAME_WEIGHTS = [1.0, 0.3, 1.4, 0.6, 0.9, 0.2, 1.2, 0.5]
BOUND = 1e-5  # the same frame computed in a window or in the whole batch (float32)
POSITIVE, NEGATIVE = 0, 1
host_context_window_step_fix = context_window_fix.host_context_window_step_fix


@pytest.fixture(scope="module")
def setup(host_pack, tiny_sd15, tiny_clip_vision, host_models):
    nodes = PackNodes.of(host_pack)
    groups = adapter_groups("base", tiny_sd15, tiny_clip_vision, seed=61)
    adapter = nodes.load.load(write_adapter(host_models, groups, "windows-base_sd15.safetensors"))[0]
    g = torch.Generator().manual_seed(62)
    batch_masks = torch.rand(FRAMES, 64, 64, generator=g)
    plain_masks = (torch.rand(FRAMES, 64, 64, generator=g) > 0.5).float()
    with torch.inference_mode():
        frames_prompt = nodes.encode.encode(tiny_clip_vision.host, reference_images(IMAGES, seed=63), "center",
                                            reference_images(1, seed=64))[0]
        single_prompt = nodes.encode.encode(tiny_clip_vision.host, reference_images(1, seed=65), "center")[0]
        batch = host_pack.node_class_mappings["ApplyIPAdapterBatch"]()
        model = batch.apply(tiny_sd15.patcher, adapter, frames_prompt, 0.9, "linear", 0.0, 1.0, "V only",
                            batch_masks, FRAME_WEIGHTS)[0]
    model = apply(nodes, model, adapter, single_prompt, 0.6, attn_mask=plain_masks)
    x = torch.randn(FRAMES, 4, LATENT_SIDE, LATENT_SIDE, generator=g)
    cond, uncond = text_conds(tiny_sd15)
    full = host_eps(model, x, SIGMA, cond, uncond)  # no windows: every row is its own frame
    return model, x, (cond, uncond), full, (batch_masks, plain_masks)


def _windowed(model, schedule: str, closed_loop: bool = False):
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    return ContextWindowsManualNode.execute(model=model, context_length=WINDOW, context_overlap=OVERLAP,
                                            context_schedule=schedule, context_stride=1, closed_loop=closed_loop,
                                            fuse_method="pyramid", dim=0).result[0]


@pytest.fixture
def record(host_pack, monkeypatch) -> list:
    """Per layer call inside a window: (global indices, entry, table counts, chunks, table row per batch row, scale
    per batch row, latent size)."""
    calls: list = []
    plan_cls = host_pack.module.ip_adapter.run_plan.RunPlan
    original = plan_cls.prepare

    def recording_prepare(self, index, entry, rule, extra, batch, latent_hw, *args):
        prepared = original(self, index, entry, rule, extra, batch, latent_hw, *args)
        window = extra.get("context_window")
        if prepared is not None and window is not None:
            table = entry.table(index, rule, prepared.k.device, prepared.k.dtype)
            for scale in (prepared.scales or {}).values():
                calls.append((list(window.index_list), entry, table.counts, list(extra["cond_or_uncond"]),
                              prepared.rows.tolist(), scale, tuple(latent_hw)))
        return prepared

    monkeypatch.setattr(plan_cls, "prepare", recording_prepare)
    return calls


def _expected_scale(host_pack, entry, frame: int, num_queries: int, latent_hw) -> torch.Tensor:
    masks = host_pack.module.ip_adapter.masks.mask_for_queries(entry.mask, num_queries, latent_hw)
    scale = masks[min(frame, masks.shape[0] - 1)].double()
    if entry.row_weights is not None:
        scale = scale * float(entry.row_weights[min(frame, entry.row_weights.numel() - 1)])
    return scale


def _assert_rows_follow_global_frames(calls: list, host_pack) -> set[tuple[int, ...]]:
    assert calls, "no layer call ran inside a context window"
    windows = set()
    for indices, entry, counts, chunks, rows, scale, latent_hw in calls:
        windows.add(tuple(indices))
        per_chunk = len(rows) // len(chunks)
        assert per_chunk == len(indices) == WINDOW
        for r, table_row in enumerate(rows):
            frame, role = indices[r % per_chunk], NEGATIVE if chunks[r // per_chunk] == 1 else POSITIVE
            offset = 0 if role == POSITIVE else counts[0]
            assert table_row == offset + min(frame, counts[role] - 1), (indices, r, table_row)
            expected = _expected_scale(host_pack, entry, frame, scale.shape[1], latent_hw)
            assert (scale[r].double() - expected).abs().max() <= 1e-6, (indices, r)
    return windows


@pytest.mark.usefixtures("host_context_window_step_fix")
@pytest.mark.parametrize("schedule, closed_loop", [("standard_static", False), ("looped_uniform", True)],
                         ids=["overlap", "loop"])
def test_each_frame_follows_its_global_index(setup, record, host_pack, schedule: str, closed_loop: bool) -> None:
    model, x, (cond, uncond), full, _ = setup
    windowed = host_eps(_windowed(model, schedule, closed_loop), x, SIGMA, cond, uncond)
    for got, expected in zip(windowed, full):
        assert_relative_close(got, expected, BOUND)
    windows = _assert_rows_follow_global_frames(record, host_pack)
    assert len(windows) >= 3 and any(w != tuple(range(w[0], w[0] + WINDOW)) for w in windows) == closed_loop
    assert any(w[0] > 0 for w in windows)  # windows past the start: a window-relative lookup would differ


def test_animatediff_sub_batches_follow_sub_idxs(setup, record) -> None:
    model, x, (cond, uncond), full, _ = setup
    sub_idxs = [6, 7, 0, 1]  # a wrapped window, as AnimateDiff's looped context options make
    sub = model.clone()
    sub.model_options["transformer_options"]["ad_params"] = {"sub_idxs": sub_idxs, "full_length": FRAMES}
    got = host_eps(sub, x[sub_idxs], SIGMA, cond, uncond)
    for side in range(2):
        assert_relative_close(got[side], full[side][sub_idxs], BOUND)


def test_without_the_global_index_frames_would_differ(setup) -> None:
    """The test above can fail: frames 4..7 computed as a separate batch (positions 0..3) differ from the truth."""
    model, x, (cond, uncond), full, _ = setup
    as_positions = host_eps(model, x[4:], SIGMA, cond, uncond)
    assert (as_positions[0] - full[0][4:]).abs().max() > 1e-3


def test_unfixed_host_error_is_the_one_the_readme_names(comfy_host) -> None:
    from pathlib import Path

    error = context_window_fix.set_step_fails_on_frame_batches()
    if error is None:
        pytest.skip("this host runs context windows on frame batches (the set_step fix is in)")
    assert context_window_fix.UNFIXED_ERROR in error
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert context_window_fix.UNFIXED_ERROR in readme
