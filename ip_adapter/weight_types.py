"""Per-layer weight schedules (`weight_type`), by SpatialTransformer index, for SD1.5 and SDXL.

The names and per-layer values are those users know from the most used IP-Adapter pack (peer.md §3), with two
deliberate differences: the middle block is really patched, and every value scales with the node's weight (so
weight 0 is always off). A layer absent from a schedule is not patched at all. "Swap" layers implement the
"precise" types: conditional rows get no image term and unconditional rows get the reference image's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import InvalidOptionError
from .layout import BaseFamily, UNetLayout

EASE_FLOOR = 0.05  # the smallest multiplier of the easing curves
WEAK = 0.2  # multiplier of the weakened blocks
QUARTER = 0.25  # SD1.5 composition's first layer
TENTH = 0.1  # composition precise's far layers


@dataclass(frozen=True)
class LayerRule:
    """How one SpatialTransformer is patched: image-term weight = node weight * factor."""

    factor: float
    swap: bool = False


Schedule = dict[int, LayerRule]  # transformer_index -> rule; absent = not patched


def _curve(layout: UNetLayout, fn: Callable[[float, float], float]) -> Schedule:
    n = layout.num_transformers
    return {t: LayerRule(fn(t, n)) for t in range(n)}


def _by_block(layout: UNetLayout, weak_blocks: set[str]) -> Schedule:
    return {t: LayerRule(WEAK if spec.block in weak_blocks else 1.0) for t, spec in enumerate(layout.transformers)}


def _ease(t: float, n: float, rising: bool) -> float:
    x = t / n
    return EASE_FLOOR + (1 - EASE_FLOOR) * (x if rising else 1 - x)


def _middle_distance(t: float, n: float) -> float:
    return abs(t - n / 2) / (n / 2)


_SCALAR_TYPES: dict[str, Callable[[UNetLayout], Schedule]] = {
    "linear": lambda lo: _curve(lo, lambda t, n: 1.0),
    "ease in": lambda lo: _curve(lo, lambda t, n: _ease(t, n, rising=False)),
    "ease out": lambda lo: _curve(lo, lambda t, n: _ease(t, n, rising=True)),
    "ease in-out": lambda lo: _curve(lo, lambda t, n: EASE_FLOOR + (1 - EASE_FLOOR) * (1 - _middle_distance(t, n))),
    "reverse in-out": lambda lo: _curve(lo, lambda t, n: EASE_FLOOR + (1 - EASE_FLOOR) * _middle_distance(t, n)),
    "weak input": lambda lo: _by_block(lo, {"input"}),
    "weak output": lambda lo: _by_block(lo, {"output"}),
    "weak middle": lambda lo: _by_block(lo, {"middle"}),
    "strong middle": lambda lo: _by_block(lo, {"input", "output"}),
}

_R, _S = LayerRule, (lambda f: LayerRule(f, swap=True))
_SD15_OUTER = (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)  # the layers far from the bottleneck
_SD15_MIDDLE = (6, 7, 8)
_SDXL_ALL = tuple(range(11))
_SDXL_STYLE, _SDXL_COMPOSITION = 6, 3

#: Layer-selective types: (family, name) -> schedule.
_SELECTIVE: dict[tuple[BaseFamily, str], Schedule] = {
    (BaseFamily.SD15, "style transfer"): {t: _R(1.0) for t in _SD15_OUTER},
    (BaseFamily.SD15, "composition"): {4: _R(QUARTER), 5: _R(1.0)},
    (BaseFamily.SD15, "strong style transfer"): {t: _R(1.0) for t in _SD15_OUTER + _SD15_MIDDLE},
    (BaseFamily.SD15, "style and composition"): {**{t: _R(1.0) for t in _SD15_OUTER}, 4: _R(QUARTER), 5: _R(1.0)},
    (BaseFamily.SD15, "style transfer precise"): {**{t: _R(1.0) for t in _SD15_OUTER}, 4: _S(QUARTER), 5: _S(1.0)},
    (BaseFamily.SD15, "composition precise"): {**{t: _S(1.0) for t in _SD15_OUTER}, 4: _R(QUARTER), 5: _R(1.0),
                                               **{t: _S(TENTH) for t in _SD15_MIDDLE}},
    (BaseFamily.SDXL, "style transfer"): {_SDXL_STYLE: _R(1.0)},
    (BaseFamily.SDXL, "composition"): {_SDXL_COMPOSITION: _R(1.0)},
    (BaseFamily.SDXL, "strong style transfer"): {t: _R(1.0) for t in _SDXL_ALL if t != _SDXL_COMPOSITION},
    (BaseFamily.SDXL, "style and composition"): {_SDXL_COMPOSITION: _R(1.0), _SDXL_STYLE: _R(1.0)},
    (BaseFamily.SDXL, "style transfer precise"): {_SDXL_COMPOSITION: _S(1.0), _SDXL_STYLE: _R(1.0)},
    (BaseFamily.SDXL, "composition precise"): {**{t: _S(TENTH) for t in _SDXL_ALL}, _SDXL_COMPOSITION: _R(1.0),
                                               _SDXL_STYLE: _S(1.0)},
}

WEIGHT_TYPES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
    "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
    "style transfer precise", "composition precise",
)


def layer_schedule(weight_type: str, layout: UNetLayout) -> Schedule:
    """The rule for every patched SpatialTransformer of `layout` under `weight_type`."""
    if weight_type in _SCALAR_TYPES:
        return _SCALAR_TYPES[weight_type](layout)
    if (layout.family, weight_type) in _SELECTIVE:
        if layout.custom:
            raise InvalidOptionError(
                f"weight_type '{weight_type}' selects layers of the standard {layout.family.value} UNet, but this "
                f"adapter has a custom layout ({layout.num_layers} layers); choose one of {', '.join(_SCALAR_TYPES)}.")
        return dict(_SELECTIVE[(layout.family, weight_type)])
    raise InvalidOptionError(f"Unknown weight_type '{weight_type}'; choose one of {', '.join(WEIGHT_TYPES)}.")


def layer_rules(weight_type: str, layout: UNetLayout) -> dict[int, LayerRule]:
    """Checkpoint index -> rule, for the layers `weight_type` patches (absent layers are not patched)."""
    schedule = layer_schedule(weight_type, layout)
    return {layer.checkpoint_index: schedule[layer.transformer_index]
            for layer in layout.layers if layer.transformer_index in schedule}
