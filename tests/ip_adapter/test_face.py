"""Face identity embeddings, the face choice and image conversions (ip_adapter/face.py), and the IMAGE_PROMPT
extension that carries them (backwards compatible: prompts built without a face are unchanged)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ip_adapter import ClipEncoding, FaceEmbeds, ImagePrompt
from ip_adapter.face import DETECTION_SIZES, from_bgr_uint8, largest_face, to_bgr_uint8

FACES, DIM = 3, 512


def _raw(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(FACES, DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 7.0


def test_normed_equals_insightface_normed_embedding() -> None:
    raw = _raw(dtype=torch.float64)
    ours = FaceEmbeds(raw).normed()
    reference = raw.numpy() / np.linalg.norm(raw.numpy(), axis=1, keepdims=True)  # Face.normed_embedding, per face
    assert np.abs(ours.numpy() - reference).max() <= 1e-12
    assert torch.allclose(ours.norm(dim=1), torch.ones(FACES, dtype=torch.float64))


@pytest.mark.parametrize("kind, normalised", [("faceid", True), ("faceid-plus", True), ("faceid-plusv2", True),
                                              ("faceid-portrait", True), ("faceid-portrait-unnorm", False)])
def test_each_kind_gets_the_embedding_it_was_trained_on(kind: str, normalised: bool) -> None:
    face = FaceEmbeds(_raw())
    expected = face.normed() if normalised else face.raw
    assert torch.equal(face.for_kind(kind), expected)


def test_embeddings_must_be_n_by_512() -> None:
    with pytest.raises(ValueError, match="512"):
        FaceEmbeds(torch.zeros(DIM))
    with pytest.raises(ValueError, match="512"):
        FaceEmbeds(torch.zeros(2, 128))


def test_largest_face_wins_over_the_higher_score() -> None:
    boxes = [(0, 0, 10, 10), (0, 0, 40, 30), (5, 5, 20, 20)]
    assert largest_face(boxes, [0.99, 0.6, 0.9]) == 1
    assert largest_face([(0, 0, 10, 10), (20, 20, 30, 30)], [0.7, 0.8]) == 1  # equal areas: better score
    assert largest_face([(10, 10, 0, 0), (0, 0, 1, 1)], [0.9, 0.1]) == 1  # a degenerate box has no area
    with pytest.raises(ValueError):
        largest_face([], [])


def test_detection_sizes_start_at_the_reference_size_and_shrink() -> None:
    assert DETECTION_SIZES[0] == 640 and list(DETECTION_SIZES) == sorted(DETECTION_SIZES, reverse=True)
    assert all(s % 32 == 0 for s in DETECTION_SIZES)  # the detector's largest stride


def test_bgr_conversion_round_trips_8_bit_images_exactly() -> None:
    levels = torch.randint(0, 256, (5, 7, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    image = levels.float() / 255.0  # what LoadImage makes of an 8-bit file
    bgr = to_bgr_uint8(image)
    assert bgr.dtype == torch.uint8 and torch.equal(bgr, levels.flip(-1))
    assert torch.equal(from_bgr_uint8(bgr), image)


def test_bgr_conversion_drops_alpha_repeats_grey_and_clamps() -> None:
    rgba = torch.tensor([[[1.0, 0.5, 0.0, 0.25]]])
    assert to_bgr_uint8(rgba).tolist() == [[[0, 128, 255]]]
    assert to_bgr_uint8(torch.full((1, 1, 1), 0.2)).tolist() == [[[51, 51, 51]]]
    assert to_bgr_uint8(torch.tensor([[[1.5, -0.5, 0.5]]])).tolist() == [[[128, 0, 255]]]
    with pytest.raises(ValueError):
        to_bgr_uint8(torch.zeros(1, 4, 4, 3))


def _prompt(face: FaceEmbeds | None = None) -> ImagePrompt:
    positive = ClipEncoding(torch.randn(FACES, 8), torch.randn(FACES, 5, 6))
    negative = ClipEncoding(torch.zeros(1, 8), torch.zeros(1, 5, 6))
    return ImagePrompt(positive, negative) if face is None else ImagePrompt(positive, negative, face)


def test_image_prompts_without_a_face_are_unchanged() -> None:
    prompt = _prompt()
    assert prompt.face is None and prompt.num_images == FACES
    moved = prompt.to(dtype=torch.float64)
    assert moved.face is None and moved.positive.hidden_states.dtype == torch.float64


def test_to_moves_the_face_embeddings_too() -> None:
    face = FaceEmbeds(_raw())
    moved = _prompt(face).to(dtype=torch.float64)
    assert moved.face is not None and moved.face.raw.dtype == torch.float64
    assert torch.equal(moved.face.raw, face.raw.double())
