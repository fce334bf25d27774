"""Everything a training run is configured with, as one frozen dataclass (filled by the CLI or by code)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import TrainingSetupError
from .recipe import LEARNING_RATE, WEIGHT_DECAY, DropRates

KINDS = ("base", "plus")
#: Image tokens per reference image of the official checkpoints.
DEFAULT_TOKENS = {"base": 4, "plus": 16}
MIXED_PRECISION = ("no", "fp16", "bf16")
EXPORT_DTYPES = ("fp16", "bf16", "fp32")
#: Options that must not change when a run is resumed: they decide which samples each step sees and what is trained.
RESUME_INVARIANTS = ("kind", "num_tokens", "resolution", "batch_size", "gradient_accumulation_steps", "seed",
                     "num_processes", "num_workers", "shuffle_buffer")


@dataclass(frozen=True)
class DataConfig:
    """Where the image-caption pairs are: exactly one of `image_folder`, `jsonl` or `shards`.

    Attributes:
        image_folder: a folder of images, each with a same-named `.txt` caption beside it (subfolders included).
        jsonl: a JSON-lines (or JSON list) manifest of `{"image_file": ..., "text": ...}`.
        image_root: the folder `image_file` paths are relative to (default: the manifest's folder).
        shards: WebDataset tar shards: files, folders, globs or brace ranges (`data/{000..099}.tar`).
        check_images: open and verify every image before training (folders and manifests; shards: headers).
    """

    image_folder: Path | None = None
    jsonl: Path | None = None
    image_root: Path | None = None
    shards: tuple[str, ...] = ()
    check_images: bool = True

    def __post_init__(self) -> None:
        given = [name for name, value in (("--image-folder", self.image_folder), ("--jsonl", self.jsonl),
                                          ("--shards", self.shards)) if value]
        if len(given) != 1:
            raise TrainingSetupError(
                f"give exactly one dataset: --image-folder, --jsonl (with --image-root) or --shards; got "
                f"{', '.join(given) or 'none'}.")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the paper's recipe where it has one (training.md §1)."""

    pretrained_model: Path
    image_encoder: Path
    data: DataConfig
    output_dir: Path
    kind: str = "base"
    num_tokens: int = 0  # 0: the official count for the kind (4 base, 16 plus)
    resampler_dim: int = 0  # 0: the context width, 1280 for SDXL (the official Plus settings)
    resolution: int = 512
    batch_size: int = 8  # per process
    learning_rate: float = LEARNING_RATE
    weight_decay: float = WEIGHT_DECAY
    drop: DropRates = field(default_factory=DropRates)
    num_epochs: int = 100
    max_steps: int | None = None
    gradient_accumulation_steps: int = 1
    mixed_precision: str | None = None  # None: accelerate's config / launch flag decides
    gradient_checkpointing: bool = False
    checkpoint_every: int = 2000
    keep_checkpoints: int | None = None
    resume: str | None = None  # "latest" or a checkpoint folder
    init_adapter: Path | None = None
    seed: int = 42
    num_workers: int = 2
    shuffle_buffer: int = 1000
    log_every: int = 10
    tensorboard: bool = False
    progress_bar: bool = True
    export_name: str | None = None
    export_dtype: str = "fp16"
    num_processes: int = 1  # filled in by the trainer from accelerate

    def __post_init__(self) -> None:
        checks = [
            (self.kind in KINDS, f"--kind must be one of {', '.join(KINDS)}, got '{self.kind}'"),
            (self.resolution > 0 and self.resolution % 8 == 0, f"--resolution must be a positive multiple of 8, "
             f"got {self.resolution}"),
            (self.batch_size > 0, "--batch-size must be at least 1"),
            (self.gradient_accumulation_steps > 0, "--gradient-accumulation-steps must be at least 1"),
            (self.checkpoint_every > 0, "--checkpoint-every must be at least 1"),
            (self.keep_checkpoints is None or self.keep_checkpoints > 0, "--keep-checkpoints must be at least 1"),
            (self.max_steps is None or self.max_steps > 0, "--max-steps must be at least 1"),
            (self.mixed_precision in (None, *MIXED_PRECISION), f"--mixed-precision must be one of "
             f"{', '.join(MIXED_PRECISION)}"),
            (self.export_dtype in EXPORT_DTYPES, f"--export-dtype must be one of {', '.join(EXPORT_DTYPES)}"),
            (self.num_tokens >= 0 and self.resampler_dim >= 0, "--num-tokens and --resampler-dim must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingSetupError(message + ".")

    @property
    def tokens(self) -> int:
        """Image tokens per reference image."""
        return self.num_tokens or DEFAULT_TOKENS[self.kind]

    def as_json(self) -> str:
        """The configuration as JSON (paths as strings), written next to every checkpoint."""
        values = asdict(self)
        values["num_tokens"] = self.tokens
        return json.dumps(values, indent=1, default=str, sort_keys=True)
