"""Load InsightFace and Encode Face Prompt in the host, on the real InsightFace with stand-in ONNX models: the pack
found without downloading, clear errors for what is missing, detection (the largest face, with the size fallback),
no-face handling for single images and videos, aligned crops, raw embeddings, the crops' CLIP encodings."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.faceid_standins import Face, expected_box, face_photo, require_faceid
from tests.host.faceid_setup import GATE, GATED, FaceNodes, encode_faces, standin_pack

require_faceid()

#: scikit-image's deprecation notice inside InsightFace's own alignment (the reference calls it directly).
pytestmark = pytest.mark.filterwarnings("ignore:.*estimate.*:FutureWarning")


@pytest.fixture(scope="module")
def nodes(host_pack) -> FaceNodes:
    return FaceNodes.of(host_pack)


@pytest.fixture(scope="module")
def analysis(nodes, host_models):
    return nodes.load_insightface.load(standin_pack(host_models), "CPU")[0]


@pytest.fixture(scope="module")
def insightface_app(host_models):
    """InsightFace used directly on the same pack (the reference)."""
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=standin_pack(host_models), root=str(host_models.folder("insightface")),
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(640, 640))
    return app


def _bgr(image: torch.Tensor) -> np.ndarray:
    return (image[0] * 255).round().to(torch.uint8).numpy()[..., ::-1].copy()


def test_embedding_and_crop_are_insightfaces_own(nodes, analysis, insightface_app) -> None:
    from insightface.utils import face_align

    face = Face(6, 9, person=3)
    image = face_photo(face)
    prompt, crops = encode_faces(nodes, analysis, image)
    reference = insightface_app.get(_bgr(image))
    assert len(reference) == 1
    np.testing.assert_allclose(reference[0].bbox, expected_box(face), atol=0.5)
    assert torch.equal(prompt.face.raw[0], torch.from_numpy(reference[0].embedding))  # raw, not normalised
    crop = face_align.norm_crop(_bgr(image), landmark=reference[0].kps, image_size=224)
    assert crops.shape == (1, 224, 224, 3)
    assert torch.equal(crops[0], torch.from_numpy(crop[..., ::-1].copy()).float() / 255.0)
    assert prompt.num_images == 1 and prompt.positive.hidden_states is None  # no CLIP vision connected


def test_the_largest_face_is_kept_not_the_best_scored(nodes, analysis, insightface_app) -> None:
    big_dim, small_sharp = Face(4, 4, size=255, strength=150, person=1), Face(14, 14, size=0, strength=255, person=2)
    image = face_photo(big_dim, small_sharp)
    reference = insightface_app.get(_bgr(image))
    assert len(reference) == 2 and reference[0].det_score > reference[1].det_score  # InsightFace: best first
    biggest = max(reference, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    np.testing.assert_allclose(biggest.bbox, expected_box(big_dim), atol=0.5)
    prompt, _ = encode_faces(nodes, analysis, image)
    assert torch.equal(prompt.face.raw[0], torch.from_numpy(biggest.embedding))


def test_several_images_give_one_face_each_in_order(nodes, analysis, insightface_app) -> None:
    images = torch.cat([face_photo(Face(5 + i, 7, person=i)) for i in range(3)])
    prompt, crops = encode_faces(nodes, analysis, images)
    expected = torch.stack([torch.from_numpy(insightface_app.get(_bgr(images[i:i + 1]))[0].embedding)
                            for i in range(3)])
    assert torch.equal(prompt.face.raw, expected) and crops.shape[0] == 3 and prompt.num_images == 3
    normed = prompt.face.normed()
    assert (normed[0] - normed[1]).abs().max() > 1e-2  # three different people


def test_no_face_is_an_error_that_names_the_image_and_the_skip_option(nodes, analysis) -> None:
    images = torch.cat([face_photo(Face(5, 5)), torch.zeros(1, 640, 640, 3)])
    with pytest.raises(nodes.core.NoFaceError, match=r"image\(s\) 1 of 2.*no_face.*skip"):
        encode_faces(nodes, analysis, images)
    with pytest.raises(nodes.core.InvalidOptionError, match="Unknown no_face 'ignore'"):
        encode_faces(nodes, analysis, images, no_face="ignore")


def test_skip_drops_frames_without_a_face_and_logs_them(nodes, analysis, caplog) -> None:
    black = torch.zeros(1, 640, 640, 3)
    frames = torch.cat([face_photo(Face(5, 5, person=1)), black, face_photo(Face(9, 9, person=2))])
    with caplog.at_level(logging.WARNING):
        prompt, crops = encode_faces(nodes, analysis, frames, no_face="skip")
    assert prompt.num_images == 2 and crops.shape[0] == 2
    assert any("skipped 1 of 3" in r.getMessage() and "[1]" in r.getMessage() for r in caplog.records)
    only, _ = encode_faces(nodes, analysis, frames[:1])
    assert torch.equal(prompt.face.raw[0], only.face.raw[0])
    with pytest.raises(nodes.core.NoFaceError, match="any of the 2 images"):
        encode_faces(nodes, analysis, torch.zeros(2, 640, 640, 3), no_face="skip")


def test_close_ups_are_found_at_a_smaller_detection_size_on_this_insightface(nodes, host_models) -> None:
    gated = nodes.load_insightface.load(standin_pack(host_models, GATED, gate=GATE), "CPU")[0]
    image = torch.zeros(1, 640, 640, 3)
    image[0, 224:416, 224:416] = 1.0  # a face large enough to survive the downscaling
    det_model = gated.app.det_model
    module = nodes.module.nodes.face_detection
    module.set_detection_size(det_model, 640)
    assert gated.app.get(_bgr(image)) == []  # the detector misses it at the reference size
    face = module.detect_face(gated, image[0])
    assert face is not None and face.det_size == max(s for s in module.DETECTION_SIZES if s < GATE)
    assert tuple(det_model.input_size) == (640, 640)  # left at the reference size for the next image
    if hasattr(det_model, "input_sizes"):
        assert [tuple(s) for s in det_model.input_sizes] == [(640, 640)]


def test_with_clip_vision_the_crops_are_encoded_with_the_reference_negative(nodes, analysis, tiny_clip_vision):
    images = torch.cat([face_photo(Face(5, 5, person=1)), face_photo(Face(8, 11, person=2))])
    prompt, crops = encode_faces(nodes, analysis, images, clip=tiny_clip_vision.host)
    with torch.inference_mode():
        direct = nodes.encode.encode(tiny_clip_vision.host, crops, "center")[0]
    assert torch.equal(prompt.positive.hidden_states, direct.positive.hidden_states)
    assert torch.equal(prompt.positive.image_embeds, direct.positive.image_embeds)
    assert torch.equal(prompt.negative.hidden_states, direct.negative.hidden_states)  # zero normalised pixels
    assert not prompt.negative.image_embeds.any()
