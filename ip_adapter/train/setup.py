"""Everything a run needs, built and checked before the first step: accelerate, the data, the frozen models, the
adapter, the optimiser and the data loader (and, when resuming, the saved state).

Any bad input (missing captions, unreadable images, wrong model folders, an encoder that does not fit, changed
options on resume) raises a pack error here, before training starts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..errors import DatasetError
from .checkpoints import Progress, check_resumable, resolve_resume
from .config import TrainConfig
from .dataset import ExampleBuilder, PairDataset, ShardStream
from .deps import require
from .models import BaseModel, ImageEncoder, load_base_model, load_image_encoder
from .module import TrainableAdapter, build_adapter, init_from_file
from .shards import check_shards, list_shards
from .sources import folder_pairs, manifest_pairs
from .step import StepContext
from .transforms import ClipPreprocess

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Run:
    """A prepared run. `module`, `optimizer` and `loader` are accelerate-prepared; `adapter` is the bare module."""

    config: TrainConfig
    accelerator: Any
    ctx: StepContext
    adapter: TrainableAdapter
    module: Any
    optimizer: Any
    loader: Any
    start: Progress
    steps_per_epoch: int | None


def make_accelerator(config: TrainConfig):
    accelerate = require("accelerate", "Training")
    if config.tensorboard:
        require("tensorboard", "TensorBoard logging (--tensorboard)")
    project = accelerate.utils.ProjectConfiguration(project_dir=str(config.output_dir),
                                                    logging_dir=str(config.output_dir / "logs"))
    return accelerate.Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                                  mixed_precision=config.mixed_precision, project_config=project,
                                  log_with="tensorboard" if config.tensorboard else None)


@dataclass(frozen=True)
class DataSource:
    """Listed (and, on the main process, checked) training data: pairs, or shard files."""

    pairs: list | None
    shards: list[Path] | None
    count: int | None  # samples, when known on this process


def check_data(config: TrainConfig, main_process: bool, global_batch: int) -> DataSource:
    """List the data; the main process also opens every image (the others wait for it)."""
    data = config.data
    check = data.check_images and main_process
    if data.shards:
        shards = list_shards(data.shards)
        source = DataSource(None, shards, check_shards(shards, data.check_images) if main_process else None)
    else:
        pairs = (folder_pairs(data.image_folder, check) if data.image_folder else
                 manifest_pairs(data.jsonl, data.image_root, check))
        source = DataSource(pairs, None, len(pairs))
    if source.count is not None and source.count < global_batch:
        raise DatasetError(f"the dataset has {source.count} samples but one step needs {global_batch} (--batch-size "
                           "x processes); lower --batch-size or add data.")
    return source


def _dataset(config: TrainConfig, source: DataSource, build: ExampleBuilder):
    if source.shards is not None:
        return ShardStream(source.shards, build, config.shuffle_buffer)
    return PairDataset(source.pairs, build)


def _place(base: BaseModel, encoder: ImageEncoder, device: torch.device, dtype: torch.dtype) -> None:
    """UNet in float32 (autocast computes in the mixed dtype); encoders in the mixed dtype, except SDXL's VAE, which
    overflows in float16 (the official SDXL script keeps it in float32 too)."""
    vae_dtype = torch.float32 if base.is_sdxl else dtype
    for module, target in [(base.unet, torch.float32), (base.vae, vae_dtype), *((m, dtype) for m in base.text_encoders),
                           (encoder.model, dtype)]:
        # diffusers warns about any .to(dtype) call, even to the dtype a module already has
        module.to(device) if target == torch.float32 else module.to(device, target)


def _loader(config: TrainConfig, dataset) -> DataLoader:
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, drop_last=True,
                      num_workers=config.num_workers, persistent_workers=False)


def prepare_run(config: TrainConfig) -> Run:
    """Check every input and build the run; raises a pack error (IPAdapterError) on bad input."""
    accelerator = make_accelerator(config)
    config = replace(config, num_processes=accelerator.num_processes)
    resume = resolve_resume(config.output_dir, config.resume)
    start = check_resumable(resume, config) if resume is not None else Progress()
    source = check_data(config, accelerator.is_main_process, config.batch_size * accelerator.num_processes)
    accelerator.wait_for_everyone()
    base, encoder = load_base_model(config.pretrained_model), load_image_encoder(config.image_encoder)
    adapter = build_adapter(base, encoder, config.kind, config.tokens, config.resampler_dim, config.seed)
    if config.init_adapter is not None and resume is None:
        init_from_file(adapter, config.init_adapter, encoder)
    build = ExampleBuilder(base.tokenizers, ClipPreprocess(encoder.processor), config.resolution, config.drop,
                           config.seed, zero_pixels_on_drop=config.kind == "plus")
    dataset = _dataset(config, source, build)
    if config.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
    _place(base, encoder, accelerator.device, WEIGHT_DTYPES.get(accelerator.mixed_precision, torch.float32))
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    module, optimizer, loader = accelerator.prepare(adapter, optimizer, _loader(config, dataset))
    if resume is not None:
        accelerator.load_state(str(resume))
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume, start.step, start.epoch, start.batches)
    per_epoch = math.ceil(len(loader) / config.gradient_accumulation_steps) if source.pairs is not None else None
    ctx = StepContext(base, encoder, adapter.clip_output, config.resolution)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    return Run(config, accelerator, ctx, adapter, module, optimizer, loader, start, per_epoch)


def output_name(config: TrainConfig, base: BaseModel) -> Path:
    """The exported file: --export-name, else `ip-adapter[-plus]_<sd15|sdxl>_trained.safetensors`."""
    if config.export_name:
        return config.output_dir / config.export_name
    kind = "-plus" if config.kind == "plus" else ""
    return config.output_dir / f"ip-adapter{kind}_{'sdxl' if base.is_sdxl else 'sd15'}_trained.safetensors"
