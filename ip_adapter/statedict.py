"""Small helpers to read dimensions off a state dict (a flat `name -> tensor` mapping)."""

from __future__ import annotations

import re
from typing import Mapping

import torch

StateDict = Mapping[str, torch.Tensor]


def shape_of(sd: StateDict, key: str) -> tuple[int, ...]:
    """The shape of `sd[key]` as a tuple (works on meta tensors too)."""
    return tuple(sd[key].shape)


def count_prefixed(sd: StateDict, prefix: str, suffix: str) -> int:
    """How many distinct integers `i` have a key `f"{prefix}{i}{suffix}"`."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    return len({m.group(1) for key in sd if (m := pattern.match(key))})


def sub_dict(sd: StateDict, prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix`, with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in sd.items() if key.startswith(prefix)}
