"""Session fixtures of the training tests: tiny base models, an image encoder and a two-image dataset on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ip_adapter.train import tiny_models as tm
from tests.ip_adapter.train.helpers import reset_accelerate

CAPTIONS = {"red": "a red square", "blue": "a blue circle"}


@dataclass(frozen=True)
class Folders:
    sd15: Path
    sdxl: Path
    encoder: Path
    images: Path

    def base(self, family: str) -> Path:
        return self.sd15 if family == tm.SD15 else self.sdxl


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
    root = tmp_path_factory.mktemp("train-models")
    return Folders(tm.write_base_model(root / "sd15", tm.SD15), tm.write_base_model(root / "sdxl", tm.SDXL),
                   tm.write_image_encoder(root / "encoder"), tm.write_images(root / "images", CAPTIONS))


@pytest.fixture(scope="package", autouse=True)
def single_thread():
    """The tiny models' tensors are far below torch's parallel grain size: a second intra-op thread only adds spin
    waits (and, on a busy machine, stalls). The previous setting is restored for the tests that follow."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps process-wide state; tests that build Accelerators reset it afterwards."""
    yield
    reset_accelerate()
