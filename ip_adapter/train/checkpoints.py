"""Training checkpoints: accelerate's state (adapter weights, optimiser, random states) plus where the data stream
was, so a resumed run neither repeats nor skips a sample.

Layout of `<output_dir>/checkpoint-<step>/`: accelerate's files (`model.safetensors` with the official
training-checkpoint keys, `optimizer.bin`, ...), `ip_adapter.safetensors` (the adapter at that step, ready for
ComfyUI), `train_config.json`, and `progress.json`, written last: a folder without it is an interrupted save and is
never resumed from.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import TrainingSetupError
from .config import RESUME_INVARIANTS, TrainConfig

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
CONFIG_FILE = "train_config.json"
ADAPTER_FILE = "ip_adapter.safetensors"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
LATEST = "latest"


@dataclass(frozen=True)
class Progress:
    """Where a run is: optimiser steps done, the current epoch and the loader batches of it already consumed."""

    step: int = 0
    epoch: int = 0
    batches: int = 0


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"checkpoint-{step}"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoint folders, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found) if (p / PROGRESS_FILE).is_file()]


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: None, "latest" (the newest finished one, or None on a fresh output folder),
    or a checkpoint folder."""
    if resume is None:
        return None
    if resume == LATEST:
        found = complete_checkpoints(output_dir)
        if not found:
            log.info("--resume latest: no finished checkpoint in %s, starting from scratch", output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / PROGRESS_FILE).is_file():
        raise TrainingSetupError(f"--resume '{path}' is not a finished checkpoint folder (no {PROGRESS_FILE}); use "
                                 f"a checkpoint-<step> folder of {output_dir} or --resume latest.")
    return path


def check_resumable(checkpoint: Path, config: TrainConfig) -> Progress:
    """The checkpoint's progress, after checking that the options deciding the data order and the trained modules
    are unchanged."""
    saved = json.loads((checkpoint / CONFIG_FILE).read_text("utf-8"))
    current = json.loads(config.as_json())
    changed = [f"{k} {saved.get(k)} -> {current[k]}" for k in RESUME_INVARIANTS if saved.get(k) != current[k]]
    if changed:
        raise TrainingSetupError(f"cannot resume from '{checkpoint}': {', '.join(changed)}. These options decide the "
                                 "data order and the model; resume with the values the run started with.")
    return Progress(**json.loads((checkpoint / PROGRESS_FILE).read_text("utf-8")))


def write_progress(checkpoint: Path, progress: Progress, config: TrainConfig) -> None:
    (checkpoint / CONFIG_FILE).write_text(config.as_json(), "utf-8")
    (checkpoint / PROGRESS_FILE).write_text(json.dumps(asdict(progress)), "utf-8")


def prune(output_dir: Path, keep: int | None) -> None:
    """Delete all but the newest `keep` finished checkpoints (None keeps everything)."""
    if keep is None:
        return
    for old in complete_checkpoints(output_dir)[: -keep or None]:
        shutil.rmtree(old, ignore_errors=True)
        log.info("removed old checkpoint %s", old)
