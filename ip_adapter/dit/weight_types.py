"""Per-block weights of DiT adapters (`weight_type`) and the options that only make sense on UNets.

A DiT has no input / middle / output blocks and no style or composition layers, so only the curves over depth
apply: the block at index i of n gets `weight * curve(i, n)`, with the UNet types' easing formulas. Every other
weight type, and the C-penalty `embeds_scaling` modes (widths relative to SD's UNet), is refused with the list of
what works.
"""

from __future__ import annotations

from typing import Callable

from ..errors import InvalidOptionError
from ..weight_types import EASE_FLOOR

_CURVES: dict[str, Callable[[float, float], float]] = {
    "linear": lambda i, n: 1.0,
    "ease in": lambda i, n: EASE_FLOOR + (1 - EASE_FLOOR) * (1 - i / n),
    "ease out": lambda i, n: EASE_FLOOR + (1 - EASE_FLOOR) * (i / n),
    "ease in-out": lambda i, n: EASE_FLOOR + (1 - EASE_FLOOR) * (1 - abs(i - n / 2) / (n / 2)),
    "reverse in-out": lambda i, n: EASE_FLOOR + (1 - EASE_FLOOR) * abs(i - n / 2) / (n / 2),
}
DIT_WEIGHT_TYPES = tuple(_CURVES)
DIT_EMBEDS_SCALING = ("V only",)


def block_factors(weight_type: str, num_blocks: int, model: str) -> tuple[float, ...]:
    """The curve factor of each of `num_blocks` blocks (multiply by the node's weight).

    Raises:
        InvalidOptionError: a weight type that selects UNet blocks or layers, naming `model` and the choices.
    """
    curve = _CURVES.get(weight_type)
    if curve is None:
        raise InvalidOptionError(
            f"weight_type '{weight_type}' selects SD1.5/SDXL UNet blocks or layers, which {model} does not have. "
            f"On FLUX.1 and SD3.5 use one of: {', '.join(DIT_WEIGHT_TYPES)}.")
    return tuple(curve(i, num_blocks) for i in range(num_blocks))


def check_embeds_scaling(mode: str, model: str) -> None:
    """Raise InvalidOptionError unless `mode` applies to a DiT adapter."""
    if mode not in DIT_EMBEDS_SCALING:
        raise InvalidOptionError(
            f"embeds_scaling '{mode}' is defined for SD1.5/SDXL cross-attention; on {model} the weight scales the "
            "image term as the reference does. Choose 'V only'.")
