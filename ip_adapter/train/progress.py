"""Progress reporting: a bar with loss and throughput on the main process, periodic log lines, optional TensorBoard."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .deps import require


@dataclass
class Meter:
    """Loss and throughput since the last report (images per second over all processes)."""

    global_batch: int
    _losses: list[float] = field(default_factory=list)
    _start: float = field(default_factory=time.perf_counter)
    _steps: int = 0

    def add(self, loss: float) -> None:
        self._losses.append(loss)
        self._steps += 1

    @property
    def last_loss(self) -> float:
        return self._losses[-1] if self._losses else float("nan")

    @property
    def images_per_s(self) -> float:
        """Throughput over the current window."""
        return self._steps * self.global_batch / max(time.perf_counter() - self._start, 1e-9)

    def report(self) -> dict[str, float]:
        """Mean loss and images/s since the previous report, then start a new window."""
        values = {"loss": sum(self._losses) / max(len(self._losses), 1), "images_per_s": self.images_per_s}
        self._losses, self._steps, self._start = [], 0, time.perf_counter()
        return values


class ProgressBar:
    """tqdm bar over optimiser steps (disabled off the main process or on request)."""

    def __init__(self, total: int | None, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            tqdm = require("tqdm", "The progress bar").tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="training")

    def update(self, loss: float, images_per_s: float) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix({"loss": f"{loss:.4f}", "img/s": f"{images_per_s:.1f}"}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
