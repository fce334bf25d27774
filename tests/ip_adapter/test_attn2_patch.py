"""The attn2 patch the host calls, without a host: rows by role (plan roles or the index fallback), the weight, the
sigma window of the run plan, precise layers, masks, a foreign base, copy-on-write stacking and the host hooks.
Every expectation is the naive float64 formula `text + w * Attn(q, K_role, V_role)` on the adapter's own weights."""

from __future__ import annotations

import copy

import pytest
import torch

from ip_adapter import ImageKV, InvalidOptionError, IPAdapter
from ip_adapter.attn2_patch import Attn2Patch, Contribution, reference_attention
from ip_adapter.checkpoint import CheckpointGroups
from ip_adapter.entry import AdapterEntry, SigmaWindow
from ip_adapter.layout import SD15_LAYOUT
from ip_adapter.rows import Role
from ip_adapter.run_plan import RUN_PLAN_KEY, RunPlan
from ip_adapter.weight_types import LayerRule
from tests.factories import image_proj_shapes, random_groups
from tests.ip_adapter.test_attention import naive_attention

CROSS, EMBED, WIDTH, HEADS, TOKENS, QUERIES = 16, 12, 32, 4, 5, 9
INDEX = 1
IN_WINDOW, OUT_OF_WINDOW = 5.0, 50.0
WINDOW = SigmaWindow(10.0, 1.0)
BOUND = 1e-10  # float64 throughout: formulas, not rounding


def _adapter() -> IPAdapter:
    widths = [WIDTH] * SD15_LAYOUT.num_layers
    groups = random_groups(image_proj_shapes(CROSS, EMBED, TOKENS), widths, CROSS, seed=2)
    return IPAdapter.from_groups(CheckpointGroups("t.safetensors", groups["image_proj"], groups["ip_adapter"]),
                                 dtype=torch.float64)


@pytest.fixture(scope="module")
def adapter() -> IPAdapter:
    return _adapter()


def _entry(adapter: IPAdapter, weight: float = 0.5, mask: torch.Tensor | None = None, **kw) -> AdapterEntry:
    g = torch.Generator().manual_seed(0)
    pos, neg = (adapter.project(torch.randn(1, EMBED, generator=g, dtype=torch.float64)) for _ in range(2))
    kv = ImageKV(adapter, pos, neg, TOKENS)
    return AdapterEntry(adapter, kv, weight, kw.pop("start_at", 0.0), kw.pop("end_at", 1.0), "V only", mask,
                        kw.pop("fallback_window", WINDOW), kw.pop("owners", ()))


def _qkv(rows: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, n, WIDTH, generator=g, dtype=torch.float64) for n in (QUERIES, TOKENS, TOKENS)]


def _extra(chunks, sigma: float = IN_WINDOW, plan: RunPlan | None = None, uuids=None) -> dict:
    extra = {"n_heads": HEADS, "cond_or_uncond": chunks, "sigmas": torch.tensor([sigma]),
             "original_shape": [1, 4, 3, 3]}
    if plan is not None:
        extra[RUN_PLAN_KEY] = plan
    if uuids is not None:
        extra["uuids"] = uuids
    return extra


def _patch(*entries: AdapterEntry, rule: LayerRule = LayerRule(1.0), base=None) -> Attn2Patch:
    return Attn2Patch(INDEX, tuple(Contribution(e, rule) for e in entries), reference_attention, base)


def _expected_row(entry: AdapterEntry, q, k, v, row: int, role: Role, weight: float | None = None) -> torch.Tensor:
    ik, iv = entry.kv.get(INDEX, q.device, q.dtype)
    text = naive_attention(q[row:row + 1], k[row:row + 1], v[row:row + 1], HEADS)
    image = naive_attention(q[row:row + 1], ik[int(role)][None], iv[int(role)][None], HEADS)
    return (text + (entry.weight if weight is None else weight) * image)[0]


def _assert_rows(out, entry, q, k, v, roles) -> None:
    for row, role in enumerate(roles):
        assert (out[row] - _expected_row(entry, q, k, v, row, role)).abs().max() <= BOUND


def test_without_a_plan_rows_follow_the_index_rule(adapter) -> None:
    entry = _entry(adapter)
    q, k, v = _qkv(3)
    out = _patch(entry)(q, k, v, _extra([1, 0, 0]))
    _assert_rows(out, entry, q, k, v, (Role.NEGATIVE, Role.POSITIVE, Role.POSITIVE))


def test_with_a_plan_rows_follow_their_conditioning(adapter) -> None:
    """DualCFGGuider's batch [negative, middle, positive] arrives as cond_or_uncond [0, 1, 2]: by index, row 0 would
    wrongly get the reference image and row 1 the negative one."""
    entry = _entry(adapter)
    plan = RunPlan({entry: WINDOW}, {"n": Role.NEGATIVE, "m": Role.POSITIVE, "p": Role.POSITIVE})
    q, k, v = _qkv(3)
    out = _patch(entry)(q, k, v, _extra([0, 1, 2], plan=plan, uuids=["n", "m", "p"]))
    _assert_rows(out, entry, q, k, v, (Role.NEGATIVE, Role.POSITIVE, Role.POSITIVE))


@pytest.mark.parametrize(("sigma", "active"), [(IN_WINDOW, True), (OUT_OF_WINDOW, False), (0.5, False)])
def test_the_plan_window_decides_and_outside_it_the_text_attention_is_returned_unchanged(adapter, sigma, active):
    entry = _entry(adapter, fallback_window=SigmaWindow(float("inf"), 0.0))  # the fallback would always be on
    q, k, v = _qkv(2)
    out = _patch(entry)(q, k, v, _extra([1, 0], sigma, plan=RunPlan({entry: WINDOW})))
    text = reference_attention(q, k, v, HEADS, {})
    assert torch.equal(out, text) is not active


def test_without_a_plan_the_apply_time_window_is_used(adapter) -> None:
    entry = _entry(adapter)
    q, k, v = _qkv(1)
    assert torch.equal(_patch(entry)(q, k, v, _extra([0], OUT_OF_WINDOW)), reference_attention(q, k, v, HEADS, {}))
    assert not torch.equal(_patch(entry)(q, k, v, _extra([0], IN_WINDOW)), reference_attention(q, k, v, HEADS, {}))


def test_precise_layers_give_uncond_rows_the_reference_and_cond_rows_nothing(adapter) -> None:
    entry = _entry(adapter)
    q, k, v = _qkv(2)
    out = _patch(entry, rule=LayerRule(1.0, swap=True))(q, k, v, _extra([1, 0]))
    text = naive_attention(q, k, v, HEADS)
    assert (out[0] - _expected_row(entry, q, k, v, 0, Role.POSITIVE)).abs().max() <= BOUND
    assert (out[1] - text[1]).abs().max() <= BOUND


def test_the_rule_factor_scales_the_weight(adapter) -> None:
    entry = _entry(adapter, weight=0.8)
    q, k, v = _qkv(1)
    out = _patch(entry, rule=LayerRule(0.25))(q, k, v, _extra([0]))
    assert (out[0] - _expected_row(entry, q, k, v, 0, Role.POSITIVE, weight=0.2)).abs().max() <= BOUND


def test_a_mask_confines_the_term_to_its_queries(adapter) -> None:
    mask = torch.zeros(1, 3, 3, dtype=torch.float64)
    mask[..., 0] = 1.0  # left column of a 3x3 latent, whose single layer grid is 3x3 = QUERIES
    entry = _entry(adapter, mask=mask)
    q, k, v = _qkv(2)
    out = _patch(entry)(q, k, v, _extra([1, 0]))
    text, full = naive_attention(q, k, v, HEADS), _patch(_entry(adapter))(q, k, v, _extra([1, 0]))
    inside = mask.flatten().bool()
    assert (out[:, inside] - full[:, inside]).abs().max() <= BOUND
    assert (out[:, ~inside] - text[:, ~inside]).abs().max() <= BOUND


def test_two_stacked_entries_add_up(adapter) -> None:
    first, second = _entry(adapter, 0.5), _entry(adapter, -0.3)
    q, k, v = _qkv(2)
    both = _patch(first).stacked(Contribution(second, LayerRule(1.0)))(q, k, v, _extra([1, 0]))
    text = naive_attention(q, k, v, HEADS)
    one, two = _patch(first)(q, k, v, _extra([1, 0])), _patch(second)(q, k, v, _extra([1, 0]))
    assert (both - (one - text) - (two - text) - text).abs().max() <= BOUND


def test_a_foreign_base_computes_the_text_part(adapter) -> None:
    entry = _entry(adapter)
    seen = []

    def foreign(q, k, v, extra):
        seen.append(extra["n_heads"])
        return torch.zeros_like(q)

    q, k, v = _qkv(1)
    out = _patch(entry, base=foreign)(q, k, v, _extra([0]))
    expected = _expected_row(entry, q, k, v, 0, Role.POSITIVE) - naive_attention(q, k, v, HEADS)[0]
    assert seen == [HEADS] and (out[0] - expected).abs().max() <= BOUND


def test_copies_share_and_stacking_builds_new_patches(adapter) -> None:
    first, second = _entry(adapter, owners=("patcher-a",)), _entry(adapter, owners=("patcher-a", "patcher-b"))
    patch = _patch(first)
    assert copy.deepcopy({"p": patch})["p"] is patch
    stacked = patch.stacked(Contribution(second, LayerRule(1.0)))
    assert stacked is not patch and patch.entries == (first,) and stacked.entries == (first, second)
    assert patch.with_base(print).base is print and patch.base is None
    assert patch.to(torch.float16) is patch and stacked.models() == ["patcher-a", "patcher-b"]


def test_apply_time_validation_names_the_fix(adapter) -> None:
    with pytest.raises(InvalidOptionError, match="Swap"):
        _entry(adapter, start_at=0.8, end_at=0.2)
    with pytest.raises(InvalidOptionError, match="choose one of"):
        AdapterEntry(adapter, _entry(adapter).kv, 1.0, 0.0, 1.0, "K only")


def test_the_plan_reads_each_step_sigma_once(adapter) -> None:
    """One device sync per model call, shared by every layer: the float() of a step's sigmas happens once."""
    entry = _entry(adapter)
    plan = RunPlan({entry: WINDOW})

    class CountingSigmas(torch.Tensor):
        reads = 0

        def flatten(self, *args, **kwargs):
            CountingSigmas.reads += 1
            return super().flatten(*args, **kwargs)

    extra = _extra([1, 0], plan=plan)
    extra["sigmas"] = torch.tensor([IN_WINDOW]).as_subclass(CountingSigmas)
    q, k, v = _qkv(2)
    patch = _patch(entry)
    for _ in range(5):
        patch(q, k, v, dict(extra))
    assert CountingSigmas.reads == 1
