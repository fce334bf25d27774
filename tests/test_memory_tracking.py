"""The peak-memory tracker used by the memory tests and benchmarks counts tensor storages from creation to release:
views share their base's storage, in-place results are not new memory, and a storage counts until its last view
is gone."""

from __future__ import annotations

import torch

from tests.memory_tracking import PeakTensorMemory, tensor_bytes

MB_FLOATS = 250_000  # float32 elements in 1,000,000 bytes


def test_peak_and_live_bytes() -> None:
    with torch.inference_mode():
        with PeakTensorMemory() as memory:
            a = torch.ones(MB_FLOATS)
            b = a * 2
            b.add_(1)  # in place: no new storage
            del a
            c = torch.ones(MB_FLOATS)  # reuses nothing: a new storage after a was freed
            view = b[:10]
        assert memory.peak == 2 * tensor_bytes(b) and memory.live == tensor_bytes(b, c)
        del b
        assert memory.live == tensor_bytes(view, c)  # the view keeps b's storage alive
        del view, c
        assert memory.live == 0


def test_views_of_tensors_made_before_do_not_count() -> None:
    outside = torch.ones(4 * MB_FLOATS)
    with torch.inference_mode(), PeakTensorMemory() as memory:
        rows = outside.view(4, MB_FLOATS)[:1]  # a view: no new memory
        copy = rows * 1.0
    assert memory.peak == tensor_bytes(copy) and rows.untyped_storage().nbytes() == tensor_bytes(outside)
