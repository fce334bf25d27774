"""Which latent frame each batch row is, in the whole animation.

A frame batch reaches the UNet as one chunk per conditioning, each chunk holding the latent frames in order. Under
context windows a model call sees only some frames, and the chunk's position p is then not frame p of the
animation: the host's context windows (`ContextWindowsManual`) put the window in `transformer_options
["context_window"]`, whose `index_list` holds the global frame of each row along its `dim` (0 for frame batches);
AnimateDiff-Evolved puts the same list in `transformer_options["ad_params"]["sub_idxs"]`. Per-frame images, weights
and masks follow these global indices, never the position inside the window.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

#: transformer_options keys: the host's current context window, and AnimateDiff-Evolved's sub-batch parameters.
CONTEXT_WINDOW_KEY = "context_window"
AD_PARAMS_KEY = "ad_params"
AD_SUB_INDICES_KEY = "sub_idxs"
#: A host context window along this dimension of the latent splits the batch into frames.
FRAME_DIM = 0
_WARNED: set[tuple] = set()


def _window_indices(extra: Mapping) -> Sequence[int] | None:
    window = extra.get(CONTEXT_WINDOW_KEY)
    if window is not None and getattr(window, "dim", FRAME_DIM) == FRAME_DIM:
        return getattr(window, "index_list", None)
    ad_params = extra.get(AD_PARAMS_KEY)
    if isinstance(ad_params, Mapping):
        return ad_params.get(AD_SUB_INDICES_KEY)
    return None


def frame_sources(extra: Mapping) -> tuple[object, object]:
    """The per-call objects the global frames are read from (for identity-keyed caches)."""
    return extra.get(CONTEXT_WINDOW_KEY), extra.get(AD_PARAMS_KEY)


def row_frames(extra: Mapping, rows_per_chunk: int) -> tuple[int, ...]:
    """The global frame index of each row of a chunk (the same for every chunk of the call).

    Args:
        extra: the attn2 patch's `extra_options` (its transformer_options).
        rows_per_chunk: rows of each conditioning's chunk in this call.

    Returns:
        `rows_per_chunk` frame indices: the window's indices under context windows, else 0, 1, 2, ...
    """
    indices = _window_indices(extra)
    if indices is not None:
        if len(indices) == rows_per_chunk:
            return tuple(int(i) for i in indices)
        key = (len(indices), rows_per_chunk)
        if key not in _WARNED:
            _WARNED.add(key)
            log.warning("IP-Adapter: a context window of %d frames met a chunk of %d rows; per-frame images, weights "
                        "and masks follow the row's position in the chunk instead.", len(indices), rows_per_chunk)
    return tuple(range(rows_per_chunk))
