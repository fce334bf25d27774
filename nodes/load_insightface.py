"""LoadInsightFace: an InsightFace model pack from models/insightface/models -> FACE_ANALYSIS (never downloads)."""

from __future__ import annotations

from ..ip_adapter import MissingModelError
from .insightface_folder import find_pack, pack_names
from .insightface_runtime import PROVIDERS, FaceAnalysisModel, load_face_analysis


class LoadInsightFace:
    DESCRIPTION = (
        "Loads an InsightFace model pack (detector + face recognizer) for Encode Face Prompt, from "
        "models/insightface/models/<pack>/ (buffalo_l for the official FaceID models). Nothing is ever downloaded: "
        "a missing pack, a missing insightface / onnxruntime or a provider your onnxruntime lacks is reported with "
        "the exact fix. Needs the optional packages in requirements-faceid.txt."
    )
    CATEGORY = "ip_adapter"
    FUNCTION = "load"
    RETURN_TYPES = ("FACE_ANALYSIS",)
    OUTPUT_TOOLTIPS = ("InsightFace face analysis; connect it to Encode Face Prompt.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model_name": (pack_names(), {"tooltip": "A pack folder under models/insightface/models/ holding "
                               ".onnx files; buffalo_l is what the FaceID models were trained with."}),
                "provider": (list(PROVIDERS), {"tooltip": "Where ONNX Runtime runs the face models. CPU always "
                             "works; the others need the matching onnxruntime build (the error says which)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model_name: str) -> bool | str:
        """A missing pack fails when the prompt is queued, with where to put it (not the host's bare list error)."""
        try:
            find_pack(model_name)
        except MissingModelError as e:
            return str(e)
        return True

    def load(self, model_name: str, provider: str) -> tuple[FaceAnalysisModel]:
        return (load_face_analysis(find_pack(model_name), provider),)
