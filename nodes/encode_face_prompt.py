"""EncodeFacePrompt: face photos -> IMAGE_PROMPT carrying InsightFace identity embeddings (and, with a CLIP vision
model, the aligned crops' encodings for FaceID Plus / Plus v2), plus the crops as an IMAGE preview."""

from __future__ import annotations

import torch

from ..ip_adapter import ClipEncoding, FaceEmbeds, ImagePrompt
from .encode_image_prompt import encode_images, reference_negative
from .face_detection import NO_FACE_OPTIONS, detect_faces
from .insightface_runtime import FaceAnalysisModel


def _no_clip(count: int) -> tuple[ClipEncoding, ClipEncoding]:
    """Width-0 encodings: the prompt holds N images but no CLIP features (ID-only FaceID models need none)."""
    return ClipEncoding(torch.zeros(count, 0), None), ClipEncoding(torch.zeros(1, 0), None)


class EncodeFacePrompt:
    DESCRIPTION = (
        "Finds the face in each reference image with InsightFace and encodes its identity for Apply IP-Adapter "
        "FaceID. Each image is one face reference; when an image shows several faces the largest is used. Faces "
        "are searched at 640 px first, then at smaller detection sizes (close-ups). FaceID Plus / Plus v2 also "
        "need the aligned face crop encoded by CLIP vision (ViT-H): connect clip_vision for them. The second "
        "output previews the aligned crops."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "encode"
    RETURN_TYPES = ("IMAGE_PROMPT", "IMAGE")
    RETURN_NAMES = ("face_prompt", "face_crops")
    OUTPUT_TOOLTIPS = ("Identity embeddings (and crop encodings) for Apply IP-Adapter FaceID.",
                       "The aligned 224x224 face crops, one per image kept.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "face_analysis": ("FACE_ANALYSIS", {"tooltip": "From Load InsightFace."}),
                "image": ("IMAGE", {"tooltip": "Face photos; each image of the batch is one reference (portrait "
                                               "adapters use several)."}),
                "no_face": (list(NO_FACE_OPTIONS), {"tooltip": "error: stop when an image has no face. skip: drop "
                            "such images and log them (for videos); it is still an error when no face is left."}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "Needed by FaceID Plus / Plus v2 (ViT-H/14): encodes the "
                                                           "aligned face crops. Other FaceID models ignore it."}),
            },
        }

    def encode(self, face_analysis: FaceAnalysisModel, image: torch.Tensor, no_face: str, clip_vision=None
               ) -> tuple[ImagePrompt, torch.Tensor]:
        faces = detect_faces(face_analysis, image, no_face)
        crops = torch.stack([f.crop for f in faces])
        identity = FaceEmbeds(torch.stack([f.embedding for f in faces]))
        if clip_vision is None:
            positive, negative = _no_clip(len(faces))
        else:
            positive = encode_images(clip_vision, crops, crop=True)
            negative, _ = reference_negative(clip_vision, positive)  # FaceID has no black-image negative
        return ImagePrompt(positive, negative, identity), crops
