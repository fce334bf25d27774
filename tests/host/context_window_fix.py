"""Running the host's context windows on frame batches in ComfyUI 0.3.64 (comfy-host.md §18).

`IndexListContextHandler.set_step` compares `sample_sigmas` (one value per step) with the whole `timestep` tensor
(one value per frame), so ContextWindowsManual fails on a frame batch before any window runs; newer ComfyUI compares
`timestep[0]`. The pack never patches the host. Its tests apply that one-line fix in-process, through the fixture
below, only when the unfixed behaviour is detected, so the pack's own window logic is tested on 0.3.64 too.
Import the fixture into a test module to use it.
"""

from __future__ import annotations

import pytest
import torch

#: The start of the error 0.3.64 raises (torch.isclose on tensors of different lengths); the README quotes it.
UNFIXED_ERROR = "must match the size of tensor b"


def set_step_fails_on_frame_batches() -> str | None:
    """The host's error for a 2-frame timestep against a 3-step schedule, or None when the host handles it."""
    import comfy.context_windows as cw

    handler = cw.IndexListContextHandler(cw.get_matching_context_schedule(cw.ContextSchedules.STATIC_STANDARD),
                                         cw.get_matching_fuse_method(cw.ContextFuseMethods.FLAT), context_length=1)
    options = {"transformer_options": {"sample_sigmas": torch.tensor([2.0, 1.0, 0.0])}}
    try:
        handler.set_step(torch.tensor([1.0, 1.0]), options)
    except RuntimeError as error:
        return str(error)
    return None


@pytest.fixture
def host_context_window_step_fix(comfy_host, monkeypatch) -> bool:
    """Applies upstream's set_step fix (compare the first row's timestep) while the test runs, only on a host that
    needs it. Returns whether it was applied."""
    import comfy.context_windows as cw

    if set_step_fails_on_frame_batches() is None:
        return False
    unfixed = cw.IndexListContextHandler.set_step

    def set_step_first_row(self, timestep: torch.Tensor, model_options: dict) -> None:
        return unfixed(self, timestep[:1], model_options)

    monkeypatch.setattr(cw.IndexListContextHandler, "set_step", set_step_first_row)
    return True
