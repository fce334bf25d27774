"""Per-frame weight schedules (the `FRAME_WEIGHTS` value: one float per latent frame) for animations: transitions
between values with named easings, a kept range of frames, and padding with the first and last values.

Easing names mean what they say: "ease in" starts slow and speeds up, "ease out" starts fast and slows down. The most
used IP-Adapter pack has these two swapped (its `ease_in` is a sine that starts fast; peer.md, IPAdapterWeights), so
a schedule ported from it with `ease_in` reads `ease out` here, and the other way round.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Callable

from .errors import InvalidOptionError

TIMINGS = ("linear", "ease in", "ease out", "ease in-out", "custom", "random")
CUSTOM, RANDOM = "custom", "random"

#: Progress t in 0..1 -> eased progress in 0..1.
EASINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "ease in": lambda t: 1.0 - math.cos(t * math.pi / 2),  # slow start: zero slope at t = 0
    "ease out": lambda t: math.sin(t * math.pi / 2),  # fast start, zero slope at t = 1
    "ease in-out": lambda t: (1.0 - math.cos(t * math.pi)) / 2,
}
_SEPARATORS = re.compile(r"[,\s]+")


@dataclass(frozen=True)
class ScheduleSpec:
    """The Frame Weights node's inputs.

    Attributes:
        values: the values to pass through, in order.
        timing: one of TIMINGS.
        frames: frames per transition between two consecutive values, both ends included (consecutive transitions
            share their end value, so k transitions last k * (frames - 1) + 1 frames); 1 steps from value to value.
        start_frame, end_frame: keep the frames start_frame <= i < end_frame of the schedule.
        add_starting_frames, add_ending_frames: copies of the first / last kept value added before / after.
        seed: the random timing's seed.
    """

    values: tuple[float, ...]
    timing: str = "linear"
    frames: int = 16
    start_frame: int = 0
    end_frame: int = 9999
    add_starting_frames: int = 0
    add_ending_frames: int = 0
    seed: int = 0


def parse_values(text: str) -> tuple[float, ...]:
    """Numbers separated by commas, spaces or new lines.

    Raises:
        InvalidOptionError: no number, or a part that is not a number (named).
    """
    values = []
    for part in _SEPARATORS.split(text.strip()):
        if not part:
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise InvalidOptionError(f"Frame Weights: '{part}' in weights is not a number; write numbers separated "
                                     "by commas, e.g. '1.0, 0.0'.") from None
    if not values:
        raise InvalidOptionError("Frame Weights: weights holds no number; write e.g. '1.0, 0.0'.")
    return tuple(values)


def _transitions(values: tuple[float, ...], timing: str, frames: int, seed: int) -> list[float]:
    """Every frame of the transitions through `values` (one value: `frames` copies of it)."""
    if len(values) == 1:
        return [values[0]] * frames
    spacing = max(frames - 1, 1)
    rng = random.Random(seed)
    progress = (lambda t: rng.random()) if timing == RANDOM else EASINGS[timing]
    out = []
    for x in range((len(values) - 1) * spacing + 1):
        j = min(x // spacing, len(values) - 2)
        start, end = values[j], values[j + 1]
        t = (x - j * spacing) / spacing
        # The eased curves end on the value exactly (sin(pi / 2) rounds to 1 - 1e-16 in float arithmetic).
        out.append(end if t == 1.0 and timing != RANDOM else start + (end - start) * progress(t))
    return out


def frame_schedule(spec: ScheduleSpec) -> list[float]:
    """One weight per frame for `spec`.

    Raises:
        InvalidOptionError: an unknown timing, frames < 1, or a range that keeps no frame (with the length).
    """
    if spec.timing not in TIMINGS:
        raise InvalidOptionError(f"Frame Weights: unknown timing '{spec.timing}'; choose one of {', '.join(TIMINGS)}.")
    if spec.frames < 1:
        raise InvalidOptionError(f"Frame Weights: frames is {spec.frames}; a transition needs at least 1 frame.")
    full = list(spec.values) if spec.timing == CUSTOM else _transitions(spec.values, spec.timing, spec.frames,
                                                                         spec.seed)
    kept = full[max(spec.start_frame, 0):spec.end_frame]
    if not kept:
        raise InvalidOptionError(
            f"Frame Weights: start_frame {spec.start_frame} .. end_frame {spec.end_frame} keeps no frame of the "
            f"{len(full)}-frame schedule; choose a range inside 0..{len(full)}.")
    return [kept[0]] * spec.add_starting_frames + kept + [kept[-1]] * spec.add_ending_frames


def inverted(weights: list[float]) -> list[float]:
    """`1 - w` per frame: the partner of a cross-fade (the peer reverses the list instead)."""
    return [1.0 - w for w in weights]
