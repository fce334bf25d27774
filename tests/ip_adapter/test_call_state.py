"""The per-call state and the patch under torch.compile, without a host.

A model call's state is prepared once (RunPlan.call_state); the patch then only gathers rows and attends. These tests
prove that this gives exactly the lazily prepared result (eager), that torch._dynamo traces the patch without a graph
break, and that one compiled graph serves every step of a run: new sigmas, a start/end window that opens and closes,
masks - the counting backend (torch._dynamo.testing.CompileCounter) would see any recompilation as a new frame."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from ip_adapter.call_state import CALL_STATE_KEY, query_counts
from ip_adapter.rows import Role
from ip_adapter.run_plan import RunPlan
from tests.ip_adapter.test_attn2_patch import (
    BOUND,
    QUERIES,
    WINDOW,
    _adapter,
    _entry,
    _extra,
    _patch,
    _qkv,
)

GRID = (3, 3)
#: Sigmas of a run: inside the window, past its end (the entry switches off), inside again (a second run).
STEPS = (5.0, 4.0, 0.5, 0.2, 5.0)


@pytest.fixture(scope="module")
def adapter():
    return _adapter()


def _prepared_extra(plan: RunPlan, patch, q: torch.Tensor, sigma: float, gated: bool) -> dict:
    extra = _extra([0, 1], sigma, plan=plan, uuids=["p", "n"])
    extra[CALL_STATE_KEY] = plan.call_state((patch,), extra, q.shape[0], GRID, q.device, q.dtype, gated=gated)
    return extra


def test_query_counts_follow_the_unet_levels() -> None:
    assert query_counts((64, 64)) == (4096, 1024, 256, 64)
    assert query_counts((13, 7)) == (91, 28, 8, 2)  # odd sides round up at every stride-2 level
    assert query_counts((1, 1)) == (1,)


@pytest.mark.parametrize("gated", [False, True], ids=["eager", "gated"])
def test_prepared_state_equals_the_lazy_path(adapter, gated: bool) -> None:
    mask = torch.rand(1, *GRID, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    entries = (_entry(adapter, weight=0.7, mask=mask), _entry(adapter, weight=0.4, end_at=0.5))
    patch = _patch(*entries)
    plan = RunPlan({entries[0]: WINDOW, entries[1]: type(WINDOW)(10.0, 4.5)}, {"p": Role.POSITIVE,
                                                                             "n": Role.NEGATIVE})
    q, k, v = _qkv(2)
    for sigma in STEPS:
        lazy = patch(q, k, v, _extra([0, 1], sigma, plan=plan, uuids=["p", "n"]))
        prepared = patch(q, k, v, _prepared_extra(plan, patch, q, sigma, gated))
        assert (prepared - lazy).abs().max() <= BOUND, sigma


def test_a_state_for_another_grid_falls_back_to_the_layer(adapter) -> None:
    entry = _entry(adapter, mask=torch.ones(1, *GRID, dtype=torch.float64))
    patch, plan = _patch(entry), RunPlan({entry: WINDOW})
    q, k, v = _qkv(2)
    extra = _extra([0, 1], plan=plan)
    extra[CALL_STATE_KEY] = plan.call_state((patch,), extra, 2, GRID, q.device, q.dtype, num_queries=(QUERIES + 1,))
    assert not extra[CALL_STATE_KEY].fits(patch.state_key, q)
    assert (patch(q, k, v, extra) - patch(q, k, v, _extra([0, 1], plan=plan))).abs().max() <= BOUND


def test_the_patch_has_no_graph_break(adapter) -> None:
    mask = torch.rand(1, *GRID, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    entry = _entry(adapter, mask=mask)
    patch, plan = _patch(entry), RunPlan({entry: WINDOW})
    q, k, v = _qkv(2)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(patch)(q, k, v, _prepared_extra(plan, patch, q, STEPS[0], gated=True))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_one_graph_serves_every_step(adapter) -> None:
    """Gated states keep the structure when the window closes: no recompilation, and the closed steps give exactly
    the text attention (the eager result of an entry that is off)."""
    entry = _entry(adapter, weight=0.9, end_at=0.5)
    patch = _patch(entry)
    plan = RunPlan({entry: type(WINDOW)(10.0, 4.5)}, {"p": Role.POSITIVE, "n": Role.NEGATIVE})
    q, k, v = _qkv(2)
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(patch, backend=counter, fullgraph=True)
    for sigma in STEPS:
        out = compiled(q, k, v, _prepared_extra(plan, patch, q, sigma, gated=True))
        eager = patch(q, k, v, _prepared_extra(plan, patch, q, sigma, gated=False))
        assert (out - eager).abs().max() <= BOUND, sigma
    assert counter.frame_count == 1
