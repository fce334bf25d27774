"""Comparison helpers with CPU-independent meaning.

"Same math" claims (our formula vs a reference formula) are checked in float64, where rounding is ~1e-16 and any
bound above 1e-10 measures the formulas. Claims between two float32 implementations (the host vs diffusers or
transformers) are checked relative to the reference's scale: float32 rounding grows with the magnitudes involved,
and different BLAS kernels (one CPU vs another) round differently, so an absolute bound on unscaled values can pass
on one machine and fail on the next.
"""

from __future__ import annotations

import torch

#: float32 vs float32 across implementations: max |a - b| / max |b|.
FLOAT32_RELATIVE = 1e-4


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|, computed in float64."""
    ours, reference = ours.double(), reference.double()
    scale = reference.abs().max().item()
    return (ours - reference).abs().max().item() / (scale if scale > 0 else 1.0)


def assert_relative_close(ours: torch.Tensor, reference: torch.Tensor, bound: float = FLOAT32_RELATIVE) -> None:
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    error = relative_error(ours, reference)
    assert error <= bound, f"relative error {error:.3e} > {bound:.0e}"
