"""Frame batches in the attn2 patch, without a host: each row attends to the image, weight and mask of its global
frame (position in the chunk, the host's context window, or AnimateDiff's sub_idxs), fewer images or weights than
frames repeat the last, per-frame weights act outside the attention under "V only" and inside it under the K+V
modes, and everything is resolved once per model call. Expectations are the naive float64 formulas."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ip_adapter import ImageKV, InvalidOptionError, IPAdapter
from ip_adapter import run_plan as run_plan_module
from ip_adapter.attn2_patch import Attn2Patch, Contribution, reference_attention
from ip_adapter.checkpoint import CheckpointGroups
from ip_adapter.entry import AdapterEntry, per_frame_rows
from ip_adapter.frames import row_frames
from ip_adapter.layout import SD15_LAYOUT
from ip_adapter.rows import Role, batch_layout
from ip_adapter.run_plan import RUN_PLAN_KEY, RunPlan
from ip_adapter.scaling import C_PENALTY_WIDTH
from ip_adapter.weight_types import LayerRule
from tests.factories import image_proj_shapes, random_groups
from tests.ip_adapter.test_attention import naive_attention

CROSS, EMBED, WIDTH, HEADS, TOKENS, QUERIES = 16, 12, 32, 4, 5, 9
GRID = (3, 3)
INDEX = 1
BOUND = 1e-10


@dataclass
class Window:
    """What the host's IndexListContextWindow exposes to the model."""

    index_list: list[int]
    dim: int = 0


@pytest.fixture(scope="module")
def adapter() -> IPAdapter:
    widths = [WIDTH] * SD15_LAYOUT.num_layers
    groups = random_groups(image_proj_shapes(CROSS, EMBED, TOKENS), widths, CROSS, seed=3)
    return IPAdapter.from_groups(CheckpointGroups("t.safetensors", groups["image_proj"], groups["ip_adapter"]),
                                 dtype=torch.float64)


def _tokens(adapter: IPAdapter, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return adapter.project(torch.randn(n, EMBED, generator=g, dtype=torch.float64))


def _entry(adapter, images: int = 3, negatives: int = 1, weight: float = 0.7, scaling: str = "V only",
           frame_weights=None, mask=None) -> AdapterEntry:
    kv = ImageKV(adapter, _tokens(adapter, images, 1), _tokens(adapter, negatives, 2), TOKENS)
    return AdapterEntry(adapter, kv, weight, 0.0, 1.0, scaling, mask, frame_weights=frame_weights)


def _qkv(rows: int, seed: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, n, WIDTH, generator=g, dtype=torch.float64) for n in (QUERIES, TOKENS, TOKENS)]


def _extra(chunks, plan: RunPlan, **more) -> dict:
    return {"n_heads": HEADS, "cond_or_uncond": chunks, "sigmas": torch.tensor([1.0]),
            "original_shape": [1, 4, *GRID], RUN_PLAN_KEY: plan, **more}


def _run(entry: AdapterEntry, chunks: list[int], frames: int, **more) -> tuple[torch.Tensor, list[torch.Tensor]]:
    q, k, v = _qkv(len(chunks) * frames)
    patch = Attn2Patch(INDEX, (Contribution(entry, LayerRule(1.0)),), reference_attention)
    return patch(q, k, v, _extra(chunks, RunPlan(), **more)), [q, k, v]


def _expected(entry: AdapterEntry, qkv, row: int, role: Role, frame: int, frame_weight: float = 1.0,
              mask_value: torch.Tensor | float = 1.0, in_attention: float | None = None) -> torch.Tensor:
    """text + w * fw * mask * Attn(q, K_f, V_f) ("V only"), or text + Attn(q, s*K_f, s*V_f) (K+V, s given)."""
    q, k, v = (t[row:row + 1] for t in qkv)
    ik, iv = entry.kv.get(INDEX, q.device, q.dtype)
    count = entry.kv.counts[int(role)]
    image_row = (0 if role is Role.POSITIVE else entry.kv.counts[0]) + min(frame, count - 1)
    ik, iv = ik[image_row][None], iv[image_row][None]
    text = naive_attention(q, k, v, HEADS)
    if in_attention is not None:
        return (text + naive_attention(q, in_attention * ik, in_attention * iv, HEADS))[0]
    return (text + entry.weight * frame_weight * mask_value * naive_attention(q, ik, iv, HEADS))[0]


def _roles(chunks: list[int], frames: int) -> list[tuple[Role, int]]:
    """(role, position in chunk) of every row, plain CFG convention (chunk index 1 = unconditional)."""
    return [(Role.NEGATIVE if c == 1 else Role.POSITIVE, p) for c in chunks for p in range(frames)]


def test_row_frames_sources() -> None:
    assert row_frames({}, 4) == (0, 1, 2, 3)
    assert row_frames({"context_window": Window([5, 6, 7, 8])}, 4) == (5, 6, 7, 8)
    assert row_frames({"ad_params": {"sub_idxs": [9, 10, 11, 0], "full_length": 12}}, 4) == (9, 10, 11, 0)
    assert row_frames({"ad_params": {"sub_idxs": None}}, 2) == (0, 1)
    assert row_frames({"context_window": Window([1, 2], dim=2)}, 2) == (0, 1)  # a window along the frames of a row


def test_a_window_that_does_not_fit_the_chunk_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    assert row_frames({"context_window": Window([4, 5, 6])}, 2) == (0, 1)
    assert "context window of 3 frames met a chunk of 2 rows" in caplog.text


def test_frame_row_index_repeats_the_last_row_of_each_role() -> None:
    layout = batch_layout(8, [1, 0], None)
    index = layout.frame_row_index((2, 3, 4, 5), (4, 1), "cpu")
    assert index.tolist() == [4, 4, 4, 4, 2, 3, 3, 3]  # negative rows: the single negative row 4


@pytest.mark.parametrize("source", ["chunk", "window", "ad_params"])
def test_each_row_gets_its_global_frames_image(adapter, source: str) -> None:
    entry = _entry(adapter, images=3, negatives=1)
    frames = {"chunk": [0, 1, 2, 3], "window": [3, 0, 1, 2], "ad_params": [1, 2, 3, 0]}[source]
    more = {"chunk": {}, "window": {"context_window": Window(frames)},
            "ad_params": {"ad_params": {"sub_idxs": frames, "full_length": 4}}}[source]
    out, qkv = _run(entry, [1, 0], 4, **more)
    for row, (role, position) in enumerate(_roles([1, 0], 4)):
        expected = _expected(entry, qkv, row, role, frames[position])
        assert (out[row] - expected).abs().max() <= BOUND, (row, role, frames[position])


def test_one_negative_per_frame(adapter) -> None:
    entry = _entry(adapter, images=2, negatives=2)
    out, qkv = _run(entry, [1, 0], 3, context_window=Window([2, 0, 1]))
    for row, (role, position) in enumerate(_roles([1, 0], 3)):
        assert (out[row] - _expected(entry, qkv, row, role, [2, 0, 1][position])).abs().max() <= BOUND


def test_v_only_frame_weights_scale_each_rows_term(adapter) -> None:
    weights = (1.0, 0.5, 0.0, 2.0)
    entry = _entry(adapter, images=2, frame_weights=weights)
    window = [4, 5, 1, 3]  # frames beyond the weights repeat the last weight
    out, qkv = _run(entry, [1, 0], 4, context_window=Window(window))
    for row, (role, position) in enumerate(_roles([1, 0], 4)):
        frame = window[position]
        expected = _expected(entry, qkv, row, role, frame, frame_weight=weights[min(frame, 3)])
        assert (out[row] - expected).abs().max() <= BOUND


@pytest.mark.parametrize("scaling", ["K+V", "K+V w/ C penalty"])
def test_kv_frame_weights_act_inside_each_frames_attention(adapter, scaling: str) -> None:
    weights = (1.0, -0.5, 0.25)
    entry = _entry(adapter, images=4, weight=0.8, scaling=scaling, frame_weights=weights)
    penalty = 1.0 if scaling == "K+V" else WIDTH / C_PENALTY_WIDTH
    window = [3, 1, 2, 0]
    out, qkv = _run(entry, [1, 0], 4, context_window=Window(window))
    for row, (role, position) in enumerate(_roles([1, 0], 4)):
        frame = window[position]
        s = 0.8 * weights[min(frame, 2)] * penalty
        assert (out[row] - _expected(entry, qkv, row, role, frame, in_attention=s)).abs().max() <= BOUND


def test_kv_frame_weights_longer_than_the_images_get_their_own_rows() -> None:
    rows, weights = per_frame_rows((2, 1), torch.tensor([1.0, 2.0, 3.0]))
    assert rows.tolist() == [0, 1, 1, 2, 2, 2]
    assert weights.tolist() == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]


def test_masks_follow_the_global_frame(adapter) -> None:
    """A 6-frame mask batch under a 3-frame window: frame f uses mask f, never mask (position in window)."""
    masks = torch.zeros(6, *GRID)
    for f in range(6):
        masks[f].view(-1)[f] = 1.0 + f  # a distinct query per frame, distinct values
    entry = _entry(adapter, images=1, mask=masks)
    window = [3, 4, 5]
    out, qkv = _run(entry, [1, 0], 3, context_window=Window(window))
    for row, (role, position) in enumerate(_roles([1, 0], 3)):
        mask_value = masks[window[position]].reshape(-1, 1).double()
        assert (out[row] - _expected(entry, qkv, row, role, 0, mask_value=mask_value)).abs().max() <= BOUND


def test_masks_and_frame_weights_multiply(adapter) -> None:
    masks = torch.rand(2, *GRID, generator=torch.Generator().manual_seed(5))
    entry = _entry(adapter, images=3, frame_weights=(0.5, 1.5, 3.0), mask=masks)
    out, qkv = _run(entry, [0], 3)
    for row in range(3):
        value = masks[min(row, 1)].reshape(-1, 1).double()
        expected = _expected(entry, qkv, row, Role.POSITIVE, row, frame_weight=(0.5, 1.5, 3.0)[row], mask_value=value)
        assert (out[row] - expected).abs().max() <= BOUND


def test_precise_layers_give_conditional_rows_nothing_and_unconditional_rows_their_frames_image(adapter) -> None:
    entry = _entry(adapter, images=3)
    q, k, v = _qkv(6)
    patch = Attn2Patch(INDEX, (Contribution(entry, LayerRule(1.0, swap=True)),), reference_attention)
    out = patch(q, k, v, _extra([1, 0], RunPlan()))
    ik, iv = entry.kv.get(INDEX, q.device, q.dtype)
    for row in range(6):
        text = naive_attention(q[row:row + 1], k[row:row + 1], v[row:row + 1], HEADS)[0]
        if row < 3:  # unconditional rows attend to the reference frame
            text = text + 0.7 * naive_attention(q[row:row + 1], ik[row][None], iv[row][None], HEADS)[0]
        assert (out[row] - text).abs().max() <= BOUND


def test_everything_is_resolved_once_per_model_call(adapter, monkeypatch) -> None:
    calls = []
    real = run_plan_module.row_frames
    monkeypatch.setattr(run_plan_module, "row_frames", lambda *a: calls.append(a) or real(*a))
    entry = _entry(adapter, images=3, frame_weights=(1.0, 0.5), mask=torch.ones(2, *GRID))
    plan = RunPlan()
    patches = [Attn2Patch(i, (Contribution(entry, LayerRule(1.0)),), reference_attention) for i in (1, 3, 5)]
    for call in range(2):
        q, k, v = _qkv(6, seed=call)
        extra = _extra([1, 0], plan, context_window=Window([0, 1, 2]))
        for patch in patches:
            patch(q, k, v, extra)
        assert len(calls) == call + 1  # one resolution per call, shared by every layer


def test_a_single_image_entry_never_resolves_frames(adapter, monkeypatch) -> None:
    monkeypatch.setattr(run_plan_module, "row_frames", lambda *a: pytest.fail("frames resolved for one image"))
    entry = _entry(adapter, images=1, negatives=1)
    out, qkv = _run(entry, [1, 0], 2, context_window=Window([5, 6]))
    for row, (role, _) in enumerate(_roles([1, 0], 2)):
        assert (out[row] - _expected(entry, qkv, row, role, 0)).abs().max() <= BOUND


def test_empty_frame_weights_are_refused(adapter) -> None:
    with pytest.raises(InvalidOptionError, match="frame_weights is empty"):
        _entry(adapter, frame_weights=())


def test_a_48_frame_mask_batch_under_16_frame_windows(adapter) -> None:
    """The issue's case: every window (16 frames, 4 of overlap) uses the masks of its own frames, not masks 0-15."""
    masks = torch.rand(48, *GRID, generator=torch.Generator().manual_seed(6))
    entry = _entry(adapter, images=1, mask=masks)
    plan = RunPlan()
    for start in (0, 12, 24, 32):
        window = list(range(start, start + 16))
        extra = _extra([1, 0], plan, context_window=Window(window))
        scale = plan.scale(entry, extra, 32, QUERIES, GRID, torch.device("cpu"), torch.float64)
        expected = masks[window].reshape(16, QUERIES, 1).double().repeat(2, 1, 1)
        assert torch.equal(scale, expected), start
