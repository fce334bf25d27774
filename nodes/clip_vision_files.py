"""CLIP vision models loaded exactly as the host's Load CLIP Vision loads them, once per file."""

from __future__ import annotations

import os
import weakref

import comfy.clip_vision

from ..ip_adapter import CheckpointFormatError

_CACHE: weakref.WeakValueDictionary[tuple, comfy.clip_vision.ClipVisionModel] = weakref.WeakValueDictionary()


def load_clip_vision(path: str) -> comfy.clip_vision.ClipVisionModel:
    """The host's CLIP_VISION object for `path` (`comfy.clip_vision.load`, as CLIPVisionLoader calls it), shared while
    anything still holds it (keyed by path, size and modification time)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    clip_vision = comfy.clip_vision.load(path)
    if clip_vision is None:
        raise CheckpointFormatError(
            f"'{os.path.basename(path)}' is not a CLIP vision model the host can load (no known encoder layout). "
            "Download the file again, or remove it from models/clip_vision.")
    _CACHE[key] = clip_vision
    return clip_vision
