"""Training examples: one image-caption pair -> the tensors a step needs, with its drop and its seed decided here.

Two datasets feed the data loader: `PairDataset` (folders and manifests; a fresh permutation every epoch) and
`ShardStream` (WebDataset shards; shard order and a shuffle buffer drawn every epoch, shards split over loader
workers). Both are deterministic given the seed and the epoch, which is what lets a run resume mid-epoch.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .recipe import DropRates, drop_draw, drop_for, sample_seed
from .shards import ShardSample, stream_shard
from .sources import ImageText, open_image
from .transforms import ClipPreprocess, resize_center_crop

Example = dict[str, torch.Tensor]


@dataclass
class ExampleBuilder:
    """Turns a decoded image and its caption into an example.

    Attributes:
        tokenizers: one per text encoder (SDXL has two); captions are padded to each one's `model_max_length`.
        clip: the image encoder's preprocessing.
        resolution: training resolution (pixels).
        rates: classifier-free-guidance drop rates.
        seed: the run's seed.
        zero_pixels_on_drop: Plus adapters drop the image as a zero (normalised) pixel tensor; base adapters zero the
            CLIP embedding in the training step instead (the official scripts' conventions).
    """

    tokenizers: list
    clip: ClipPreprocess
    resolution: int
    rates: DropRates
    seed: int
    zero_pixels_on_drop: bool

    def _ids(self, text: str) -> torch.Tensor:
        ids = [tok(text, max_length=tok.model_max_length, padding="max_length", truncation=True,
                   return_tensors="pt").input_ids[0] for tok in self.tokenizers]
        return torch.stack(ids)

    def __call__(self, image, caption: str, identity: str, epoch: int) -> Example:
        """Returns pixels (3, R, R), clip_pixels (3, S, S), input_ids (tokenizers, L), drop_image (), seed (),
        original_size (2,), crop_top_left (2,)."""
        seed = sample_seed(self.seed, epoch, identity)
        drop = drop_for(drop_draw(seed), self.rates)
        cropped = resize_center_crop(image, self.resolution)
        clip_pixels = self.clip(image)
        if drop.image and self.zero_pixels_on_drop:
            clip_pixels = torch.zeros_like(clip_pixels)
        return {
            "pixels": cropped.pixels,
            "clip_pixels": clip_pixels,
            "input_ids": self._ids("" if drop.text else caption),
            "drop_image": torch.tensor(drop.image),
            "seed": torch.tensor(seed, dtype=torch.int64),
            "original_size": torch.tensor(cropped.original_size),
            "crop_top_left": torch.tensor(cropped.crop_top_left),
        }


def epoch_generator(seed: int, epoch: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, epoch, purpose))


class PairDataset(Dataset):
    """Map-style dataset over listed pairs; position p of epoch e is pair `order_e[p]`."""

    def __init__(self, pairs: list[ImageText], build: ExampleBuilder) -> None:
        self.pairs, self.build = pairs, build
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = torch.randperm(len(self.pairs), generator=epoch_generator(self.build.seed, epoch, "order"))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, position: int) -> Example:
        pair = self.pairs[int(self.order[position])]
        return self.build(open_image(pair.image), pair.caption, pair.identity, self.epoch)


def shuffled(samples: Iterator[ShardSample], rng: random.Random, size: int) -> Iterator[ShardSample]:
    """A seeded shuffle buffer of `size` samples over a stream (size <= 1 keeps the order)."""
    buffer: list[ShardSample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


def decode(sample: ShardSample):
    """The sample's image as PIL RGB; a broken one is a DatasetError naming the shard and key."""
    return open_image(io.BytesIO(sample.image), f"shard sample {sample.identity}")


class ShardStream(IterableDataset):
    """Streams WebDataset shards: every epoch a new shard order, then each loader worker reads every W-th shard of
    it through its own seeded shuffle buffer."""

    def __init__(self, shards: list[Path], build: ExampleBuilder, buffer: int) -> None:
        self.shards, self.build, self.buffer = shards, build, buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> tuple[list[Path], int]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = torch.randperm(len(self.shards), generator=epoch_generator(self.build.seed, self.epoch, "shards"))
        return [self.shards[int(i)] for i in order[worker::workers]], worker

    def __iter__(self) -> Iterator[Example]:
        shards, worker = self._my_shards()
        rng = random.Random(sample_seed(self.build.seed, self.epoch, f"buffer-{worker}"))
        stream = chain.from_iterable(stream_shard(shard) for shard in shards)
        for sample in shuffled(stream, rng, self.buffer):
            yield self.build(decode(sample), sample.caption, sample.identity, self.epoch)
