"""Which image each batch row gets: by the conditioning a chunk came from (uuid -> name), for every guider layout,
with plain CFG's index convention only as the fallback for unknown conditionings."""

from __future__ import annotations

import logging

import pytest
import torch

from ip_adapter.rows import Role, batch_layout, role_of_conditioning, roles_by_uuid

P, N = Role.POSITIVE, Role.NEGATIVE


@pytest.mark.parametrize(("name", "role"), [
    ("positive", P), ("negative", N), ("middle", P), ("empty_negative_prompt", N), ("uncond", N), ("Negative", N),
    ("style", P),
])
def test_the_documented_naming_rule(name: str, role: Role) -> None:
    assert role_of_conditioning(name) is role


def _guider_conds(*names: str) -> dict:
    return {name: [{"uuid": f"{name}-{i}"} for i in range(2)] for name in names}


#: (guider's conds names, the conds list it batches, cond_or_uncond, expected roles per chunk)
GUIDERS = {
    "cfg": (("positive", "negative"), ["negative", "positive"], [1, 0], (N, P)),
    "cfg-1": (("positive", "negative"), ["positive"], [0], (P,)),
    "dual-cfg": (("positive", "middle", "negative"), ["negative", "middle", "positive"], [0, 1, 2], (N, P, P)),
    "perp-neg": (("positive", "empty_negative_prompt", "negative"), ["positive", "negative", "empty_negative_prompt"],
                 [0, 1, 2], (P, N, N)),
    "sag-uncond-alone": (("positive", "negative"), ["negative"], [0], (N,)),
}


@pytest.mark.parametrize("case", GUIDERS.values(), ids=GUIDERS.keys())
def test_roles_follow_the_conditioning_not_the_index(case) -> None:
    names, batched, chunks, expected = case
    known = roles_by_uuid(_guider_conds(*names))
    layout = batch_layout(2 * len(chunks), chunks, [f"{name}-0" for name in batched], known)
    assert layout.chunk_roles == expected and layout.rows_per_chunk == 2
    assert layout.row_index("cpu").tolist() == [int(r) for r in expected for _ in range(2)]


def test_the_plain_index_rule_is_the_fallback_for_unknown_conditionings() -> None:
    layout = batch_layout(6, [1, 0, 0], None)
    assert layout.chunk_roles == (N, P, P) and layout.rows_per_chunk == 2
    assert batch_layout(2, [0, 1], ["made-in-a-patch", "positive-0"], roles_by_uuid(_guider_conds("positive"))
                        ).chunk_roles == (P, P)


def test_a_direct_call_is_all_conditional() -> None:
    layout = batch_layout(3, None, None)
    assert layout.chunk_roles == (P,) and layout.rows_per_chunk == 3
    assert torch.equal(layout.row_index("cpu"), torch.zeros(3, dtype=torch.long))


def test_an_unknown_layout_is_logged_once_and_treated_as_conditional(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ip_adapter.rows"):
        for _ in range(3):
            layout = batch_layout(5, [1, 0, 7], None)
    assert layout.chunk_roles == (P,) and layout.rows_per_chunk == 5
    assert len([r for r in caplog.records if "does not split" in r.getMessage()]) == 1
