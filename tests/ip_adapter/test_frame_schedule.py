"""Frame weight schedules: transitions through the values with correctly named easings (ease in starts slow), the
shared end value of consecutive transitions, custom and seeded random timings, the kept range, padding, 1 - w."""

from __future__ import annotations

import math

import pytest

from ip_adapter import InvalidOptionError
from ip_adapter.frame_schedule import EASINGS, ScheduleSpec, frame_schedule, inverted, parse_values

EXACT = 1e-12


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= EXACT for x, y in zip(a, b))


def test_parse_values_accepts_commas_spaces_and_new_lines() -> None:
    assert parse_values("1.0, 0.0") == (1.0, 0.0)
    assert parse_values(" 0\n0.5 ,, 1 ") == (0.0, 0.5, 1.0)


@pytest.mark.parametrize("text, message", [("1.0, x", "'x' in weights is not a number"), (" , ", "holds no number")])
def test_parse_values_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        parse_values(text)


def test_linear_two_values_over_frames() -> None:
    assert _close(frame_schedule(ScheduleSpec((1.0, 0.0), frames=5)), [1.0, 0.75, 0.5, 0.25, 0.0])


def test_easing_names_mean_what_they_say() -> None:
    """ease in: slow start (below the line early), ease out: fast start (above it); both end on the value."""
    ease_in = frame_schedule(ScheduleSpec((0.0, 1.0), "ease in", frames=11))
    ease_out = frame_schedule(ScheduleSpec((0.0, 1.0), "ease out", frames=11))
    in_out = frame_schedule(ScheduleSpec((0.0, 1.0), "ease in-out", frames=11))
    for i in range(1, 10):
        assert ease_in[i] < i / 10 < ease_out[i]
    assert ease_in[1] - ease_in[0] < ease_in[10] - ease_in[9]  # speeds up
    assert ease_out[1] - ease_out[0] > ease_out[10] - ease_out[9]  # slows down
    assert abs(in_out[5] - 0.5) <= EXACT and in_out[1] < 0.1 and in_out[9] > 0.9
    for schedule in (ease_in, ease_out, in_out):
        assert schedule[0] == 0.0 and abs(schedule[-1] - 1.0) <= EXACT


def test_easing_formulas() -> None:
    """The peer's ease_in is our ease out and its ease_out our ease in (peer.md, IPAdapterWeights)."""
    for t in (0.0, 0.3, 0.5, 1.0):
        assert abs(EASINGS["ease out"](t) - math.sin(t * math.pi / 2)) <= EXACT  # the peer's "ease_in"
        assert abs(EASINGS["ease in"](t) - (1 - math.cos(t * math.pi / 2))) <= EXACT  # the peer's "ease_out"


def test_consecutive_transitions_share_their_end_value() -> None:
    schedule = frame_schedule(ScheduleSpec((0.0, 1.0, 0.0), frames=3))
    assert _close(schedule, [0.0, 0.5, 1.0, 0.5, 0.0])


def test_one_value_holds_and_one_frame_steps() -> None:
    assert frame_schedule(ScheduleSpec((0.7,), frames=4)) == [0.7] * 4
    assert frame_schedule(ScheduleSpec((1.0, 0.0, 0.5), frames=1)) == [1.0, 0.0, 0.5]


def test_custom_uses_the_values_one_per_frame() -> None:
    assert frame_schedule(ScheduleSpec((0.2, 0.9, 0.1), "custom", frames=16)) == [0.2, 0.9, 0.1]


def test_random_is_seeded_and_stays_between_the_values() -> None:
    a = frame_schedule(ScheduleSpec((0.25, 0.75), "random", frames=50, seed=3))
    assert a == frame_schedule(ScheduleSpec((0.25, 0.75), "random", frames=50, seed=3))
    assert a != frame_schedule(ScheduleSpec((0.25, 0.75), "random", frames=50, seed=4))
    assert len(a) == 50 and all(0.25 <= w <= 0.75 for w in a)


def test_range_and_padding() -> None:
    spec = ScheduleSpec((0.0, 1.0), frames=5, start_frame=1, end_frame=4, add_starting_frames=2, add_ending_frames=1)
    assert _close(frame_schedule(spec), [0.25, 0.25, 0.25, 0.5, 0.75, 0.75])


@pytest.mark.parametrize("spec, message", [
    (ScheduleSpec((1.0, 0.0), frames=4, start_frame=4), "keeps no frame of the 4-frame schedule"),
    (ScheduleSpec((1.0, 0.0), "bounce"), "unknown timing 'bounce'"),
    (ScheduleSpec((1.0, 0.0), frames=0), "at least 1 frame"),
])
def test_bad_specs_are_named(spec: ScheduleSpec, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        frame_schedule(spec)


def test_inverted_is_one_minus_w() -> None:
    assert _close(inverted([1.0, 0.75, 0.2]), [0.0, 0.25, 0.8])
