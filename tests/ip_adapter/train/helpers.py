"""Shared pieces of the training tests: configs for the tiny models, a fixed evaluation loss, weight comparisons."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import default_collate

from ip_adapter.train.config import DataConfig, TrainConfig
from ip_adapter.train.dataset import ExampleBuilder, PairDataset
from ip_adapter.train.recipe import DropRates, diffusion_loss
from ip_adapter.train.setup import Run
from ip_adapter.train.step import step_inputs
from ip_adapter.train.transforms import ClipPreprocess
from tests.ip_adapter.train import tiny_models as tm

#: Epochs whose draws training never sees (the tests train for far fewer): a fixed held-out set of 32 noise draws
#: (fewer make the mean loss too noisy: timesteps alone move a sample's loss by a factor of several).
EVAL_EPOCHS = range(1000, 1016)


def config(base: Path, encoder: Path, output: Path, data: DataConfig, **options) -> TrainConfig:
    """A fast config for the tiny models: 16 px, no workers, no bar, float32 export, checkpoints only at the end."""
    defaults = dict(resolution=tm.RESOLUTION, batch_size=2, num_workers=0, progress_bar=False, log_every=1000,
                    checkpoint_every=1000, export_dtype="fp32", max_steps=4)
    return TrainConfig(pretrained_model=base, image_encoder=encoder, data=data, output_dir=output,
                       **{**defaults, **options})


def reset_accelerate() -> None:
    """accelerate keeps process-wide state (AcceleratorState); each in-process run starts from a clean one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def held_out_loss(run: Run) -> float:
    """Mean loss of the adapter on both training images under fixed draws, without drops."""
    pairs = run.loader.dataset.pairs
    build = ExampleBuilder(run.ctx.base.tokenizers, ClipPreprocess(run.ctx.encoder.processor), run.config.resolution,
                           DropRates(0, 0, 0), run.config.seed, zero_pixels_on_drop=run.config.kind == "plus")
    dataset, losses = PairDataset(pairs, build), []
    with torch.no_grad():
        for epoch in EVAL_EPOCHS:
            dataset.set_epoch(epoch)
            batch = default_collate([dataset[i] for i in range(len(dataset))])
            inputs = step_inputs(batch, run.ctx, torch.device("cpu"))
            target = inputs.pop("target")
            losses.append(diffusion_loss(run.adapter(**inputs), target).item())
    return sum(losses) / len(losses)


def _tensors(x: Path | dict) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in (load_file(str(x)) if isinstance(x, Path) else x).items()}


def relative_gap(a: Path, b: Path, control: Path) -> float:
    """||a - b|| / ||a - control|| over all tensors: how much closer b is to a than a run that differs on purpose.

    Max-abs differences of Adam-trained weights are a poor measure of "same math": Adam divides each gradient by
    its own magnitude, so float reassociation on a near-zero gradient can move that one weight by a good fraction
    of the learning rate. The overall update is what must agree.
    """
    ta, tb, tc = _tensors(a), _tensors(b), _tensors(control)
    gap = sum(((ta[k] - tb[k]) ** 2).sum() for k in ta) ** 0.5
    return float(gap / sum(((ta[k] - tc[k]) ** 2).sum() for k in ta) ** 0.5)


def max_difference(a: Path | dict, b: Path | dict) -> float:
    """Largest absolute difference between two adapter files (or state dicts) with the same keys."""
    a = load_file(str(a)) if isinstance(a, Path) else a
    b = load_file(str(b)) if isinstance(b, Path) else b
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def shard_members(folder: Path, stems: list[str], caption_ext: str = "txt") -> list[tuple[str, bytes]]:
    members = []
    for stem in stems:
        members.append((f"{stem}.png", (folder / f"{stem}.png").read_bytes()))
        text = (folder / f"{stem}.txt").read_text()
        data = json.dumps({"caption": text}).encode() if caption_ext == "json" else text.encode()
        members.append((f"{stem}.{caption_ext}", data))
    return members
