"""Tiny stand-ins for an InsightFace model pack, built with torch.onnx.export, that the real InsightFace (0.7.x and
2.x) routes as a detector and an ArcFace recognizer (faceid.md §2), and face photos they respond to.

Detector (SCRFD layout: 9 outputs, strides 8/16/32, 2 anchors): only stride-32 cells score. A cell is a face when the
mean of its green and blue channels is high; the red channel sets the box size (black: 1 stride each side, full red:
3) and the five keypoints scale with it. So a `Face` drawn into one 32x32 cell of a 640x640 canvas is detected there,
with a score and a size chosen independently. An optional size gate (score x sigmoid(gate - input height)) makes a
detector that finds faces only at detection sizes below `gate`. Recognizer: 112x112 crop -> average pool 4x4 ->
Linear(48, 512), fan-in scaled; the red texture drawn around a face makes one "person" differ from another.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

#: CI sets this: the FaceID tests then fail, instead of skipping, when insightface or onnxruntime is missing.
REQUIRE_ENV_VAR = "IPADAPTER_REQUIRE_FACEID"
STRIDES = (8, 16, 32)
FACE_STRIDE = 32
ANCHORS = 2
OUTPUT_NAMES = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
#: Score = sigmoid(GAIN * (mean(G, B) - LEVEL)) on normalised pixels ((v - 127.5) / 128).
GAIN, LEVEL = 20.0, 0.1
#: Keypoints (left eye, right eye, nose, mouth corners) as (dx, dy) per box half-size, in stride units.
KEYPOINTS = (-0.35, -0.3, 0.35, -0.3, 0.0, 0.05, -0.3, 0.35, 0.3, 0.35)
RECOGNIZER_SIZE, EMBEDDING_DIM, POOL = 112, 512, 8
#: Side of the texture blocks around a face (coarse, so the recognizer's pooling keeps them apart).
TEXTURE_BLOCK = 16
CANVAS = 640
OPSET = 17
DETECTOR_FILE, RECOGNIZER_FILE = "det_standin.onnx", "w600k_standin.onnx"


def require_faceid() -> None:
    """Skip the calling test module without insightface / onnxruntime, unless IPADAPTER_REQUIRE_FACEID=1."""
    required = os.environ.get(REQUIRE_ENV_VAR, "").strip().lower() in {"1", "true", "yes"}
    for name in ("insightface", "onnxruntime", "onnx"):
        if required:
            importlib.import_module(name)
        else:
            pytest.importorskip(name, reason=f"{name} is not installed (pip install -r requirements-faceid.txt)")


class StandInDetector(nn.Module):
    def __init__(self, gate: float | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.register_buffer("keypoints", torch.tensor(KEYPOINTS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, boxes, kps = [], [], []
        for stride in STRIDES:
            cells = F.avg_pool2d(x, stride)  # (1, 3, H/s, W/s); anchors are row-major cells, 2 per cell
            red = cells[:, 0].reshape(-1, 1).repeat_interleave(ANCHORS, dim=0)
            green_blue = cells[:, 1:].mean(dim=1).reshape(-1, 1).repeat_interleave(ANCHORS, dim=0)
            score = torch.sigmoid(GAIN * (green_blue - LEVEL)) if stride == FACE_STRIDE else green_blue * 0.0
            if self.gate is not None and stride == FACE_STRIDE:
                height = torch.ones_like(x[0, 0, :, 0]).sum()  # traced from the input, so it stays dynamic
                score = score * torch.sigmoid(self.gate - height)
            half = 2.0 + red  # box half-size in strides
            scores.append(score)
            boxes.append(half.repeat(1, 4))
            kps.append(half * self.keypoints)
        return (*scores, *boxes, *kps)


class StandInRecognizer(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(POOL)
        self.fc = nn.Linear(3 * POOL * POOL, EMBEDDING_DIM, bias=False)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=generator) * 3 / (3 * POOL * POOL) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(x).flatten(1)
        return self.fc(features - features.mean(dim=1, keepdim=True))  # centred: the black background cancels


def _export(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str], dynamic: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), input_names=["input.1"], output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)


@functools.cache
def _built(directory: str, gate: float | None, seed: int) -> Path:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    detector_axes = {"input.1": {2: "height", 3: "width"}, **{n: {0: f"anchors_{n}"} for n in OUTPUT_NAMES}}
    _export(StandInDetector(gate), torch.zeros(1, 3, CANVAS, CANVAS), path / DETECTOR_FILE, OUTPUT_NAMES,
            detector_axes)
    _export(StandInRecognizer(seed), torch.zeros(1, 3, RECOGNIZER_SIZE, RECOGNIZER_SIZE), path / RECOGNIZER_FILE,
            ["embedding"], {"input.1": {0: "batch"}, "embedding": {0: "batch"}})
    return path


def build_pack(directory: Path, gate: float | None = None, seed: int = 0) -> Path:
    """Write the two stand-in models into `directory` (a pack folder, `<root>/models/<name>`), once per process."""
    return _built(str(directory), gate, seed)


@dataclass(frozen=True)
class Face:
    """A face drawn into the stand-in's grid.

    Attributes:
        row, col: its 32x32 cell on the 640x640 canvas (20 x 20 cells).
        size: red level 0..255 (box half-size 1 + 2 * size / 255 strides, roughly).
        strength: green/blue level 0..255 (score ~1 at 255, ~0.8 at 150, none below ~110).
        person: seed of the red texture around it (the identity the recognizer sees).
    """

    row: int
    col: int
    size: int = 255
    strength: int = 255
    person: int = 0


def face_photo(*faces: Face, canvas: int = CANVAS) -> torch.Tensor:
    """An IMAGE (1, canvas, canvas, 3) in 0..1: black, each face a coloured cell in a red texture of its person."""
    image = torch.zeros(canvas, canvas, 3)
    for face in faces:
        generator = torch.Generator().manual_seed(face.person)
        top, left = face.row * FACE_STRIDE, face.col * FACE_STRIDE
        area = (slice(max(0, top - 2 * FACE_STRIDE), top + 3 * FACE_STRIDE),
                slice(max(0, left - 2 * FACE_STRIDE), left + 3 * FACE_STRIDE))
        height, width = image[area][..., 0].shape
        blocks = torch.randint(0, 256, (-(-height // TEXTURE_BLOCK), -(-width // TEXTURE_BLOCK)), generator=generator)
        texture = blocks.repeat_interleave(TEXTURE_BLOCK, 0).repeat_interleave(TEXTURE_BLOCK, 1)[:height, :width]
        image[area + (0,)] = texture.float() / 255.0
        cell = (slice(top, top + FACE_STRIDE), slice(left, left + FACE_STRIDE))
        image[cell] = torch.tensor([face.size, face.strength, face.strength]) / 255.0
    return image[None]


def expected_box(face: Face) -> tuple[float, float, float, float]:
    """The stand-in's box for `face` on a 640 canvas detected at 640: InsightFace puts a cell's anchor at its top-left
    corner, and the box spans the half-size (in strides) on each side of it."""
    red = (face.size - 127.5) / 128.0
    half = (2.0 + red) * FACE_STRIDE
    cx, cy = face.col * FACE_STRIDE, face.row * FACE_STRIDE
    return (cx - half, cy - half, cx + half, cy + half)
