"""Finding the reference face of each image: InsightFace detection at falling sizes, the largest face, its aligned
crop and its identity embedding."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.utils
import numpy as np
import torch

from ..ip_adapter import InvalidOptionError, NoFaceError
from ..ip_adapter.face import ALIGNED_CROP_SIZE, DETECTION_SIZES, from_bgr_uint8, largest_face, to_bgr_uint8
from .insightface_runtime import FaceAnalysisModel

log = logging.getLogger(__name__)
NO_FACE_OPTIONS = ("error", "skip")


@dataclass(frozen=True)
class DetectedFace:
    """The face kept from one image.

    Attributes:
        embedding: the recognizer's raw identity embedding. Shape: (512,).
        crop: the face aligned to the ArcFace template, as an IMAGE. Shape: (224, 224, 3).
        bbox: (x1, y1, x2, y2) in the image's pixels.
        det_score: the detector's confidence.
        det_size: the detection size it was found at.
    """

    embedding: torch.Tensor
    crop: torch.Tensor
    bbox: tuple[float, ...]
    det_score: float
    det_size: int


def set_detection_size(det_model, size: int) -> None:
    """insightface 0.7.x detects at `input_size`; 2.x at every size of the list `input_sizes` (and ignores
    `input_size`, which is why retrying by setting it alone does nothing there). Setting both works on both."""
    det_model.input_size = (size, size)
    if hasattr(det_model, "input_sizes"):
        det_model.input_sizes = [(size, size)]


def _keep(model: FaceAnalysisModel, bgr: np.ndarray, faces: list, size: int) -> DetectedFace:
    face = faces[largest_face([f.bbox for f in faces], [f.det_score for f in faces])]
    crop = model.face_align.norm_crop(bgr, landmark=face.kps, image_size=ALIGNED_CROP_SIZE)
    embedding = torch.from_numpy(np.array(face.embedding, dtype=np.float32))
    return DetectedFace(embedding, from_bgr_uint8(torch.from_numpy(crop)), tuple(float(v) for v in face.bbox),
                        float(face.det_score), size)


def detect_face(model: FaceAnalysisModel, image: torch.Tensor) -> DetectedFace | None:
    """The largest face of one IMAGE (H, W, C), trying each of DETECTION_SIZES until one finds a face; None if none
    does. The detector is left at the reference size."""
    bgr = to_bgr_uint8(image).numpy()
    det_model = model.app.det_model
    try:
        with warnings.catch_warnings():  # scikit-image's deprecation notice inside InsightFace's alignment
            warnings.simplefilter("ignore", FutureWarning)
            for size in DETECTION_SIZES:
                set_detection_size(det_model, size)
                faces = model.app.get(bgr)
                if faces:
                    return _keep(model, bgr, faces, size)
    finally:
        set_detection_size(det_model, DETECTION_SIZES[0])
    return None


def _no_face_error(missing: list[int], total: int, skip: bool) -> NoFaceError:
    sizes = f"{DETECTION_SIZES[0]}..{DETECTION_SIZES[-1]} px"
    if skip:
        return NoFaceError(f"InsightFace found no face in any of the {total} images (detection sizes {sizes}). Use "
                           "images where a face is clearly visible.")
    which = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
    return NoFaceError(
        f"InsightFace found no face in image(s) {which} of {total} (0-based; detection sizes {sizes}). Use an image "
        "where the face is clearly visible and not too small, or set no_face to 'skip' to drop such images (for "
        "example frames of a video).")


def detect_faces(model: FaceAnalysisModel, images: torch.Tensor, no_face: str) -> list[DetectedFace]:
    """One face per image of the batch (B, H, W, C); each image is an interruption point and a progress step.

    Raises:
        NoFaceError: an image without a face with `no_face="error"`, or no face at all with "skip".
    """
    if no_face not in NO_FACE_OPTIONS:
        raise InvalidOptionError(f"Unknown no_face '{no_face}'; choose one of {', '.join(NO_FACE_OPTIONS)}.")
    progress = comfy.utils.ProgressBar(len(images)) if len(images) > 1 else None
    found, missing = [], []
    for index, image in enumerate(images):
        mm.throw_exception_if_processing_interrupted()
        face = detect_face(model, image)
        if face is None:
            missing.append(index)
        else:
            found.append(face)
            if face.det_size != DETECTION_SIZES[0]:
                log.info("Image %d: face found at detection size %d", index, face.det_size)
        if progress is not None:
            progress.update(1)
    if missing and (no_face == "error" or not found):
        raise _no_face_error(missing, len(images), no_face == "skip")
    if missing:
        log.warning("Encode Face Prompt: skipped %d of %d images without a face: %s", len(missing), len(images),
                    missing)
    return found
