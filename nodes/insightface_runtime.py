"""InsightFace and ONNX Runtime, optional dependencies: imported only when a face model is loaded, each missing
piece reported with the pip command for the host's own Python, and the execution provider checked before use."""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..ip_adapter import InvalidOptionError, MissingDependencyError, MissingModelError
from ..ip_adapter.face import DETECTION_SIZES
from .insightface_folder import ModelPack

log = logging.getLogger(__name__)

#: The node's provider names -> ONNX Runtime's, and the package that brings each.
PROVIDERS = {
    "CPU": ("CPUExecutionProvider", "onnxruntime"),
    "CUDA": ("CUDAExecutionProvider", "onnxruntime-gpu"),
    "ROCM": ("ROCMExecutionProvider", "onnxruntime-rocm"),
    "CoreML": ("CoreMLExecutionProvider", "onnxruntime"),
    "DirectML": ("DmlExecutionProvider", "onnxruntime-directml"),
    "OpenVINO": ("OpenVINOExecutionProvider", "onnxruntime-openvino"),
}
#: Only the detector and the recognizer are needed; the landmark and attribute models of a pack are skipped.
MODULES = ["detection", "recognition"]
DETECTION_THRESHOLD = 0.5
CPU_CONTEXT, DEVICE_CONTEXT = -1, 0


def pip_command(*packages: str) -> str:
    """The install command for the Python that runs ComfyUI (portable installs have their own)."""
    return f'"{sys.executable}" -m pip install {" ".join(packages)}'


def _import(name: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise MissingDependencyError(
            f"FaceID needs the optional package '{package}', which could not be imported ({e}). Install InsightFace "
            f"and ONNX Runtime into ComfyUI's Python with: {pip_command('insightface', 'onnxruntime')} (or "
            "pip install -r requirements-faceid.txt from this pack's folder), then restart ComfyUI.") from e


@dataclass(frozen=True)
class InsightFaceModules:
    """The pieces of InsightFace the pack calls (insightface 0.7.x and 2.x alike)."""

    onnxruntime: ModuleType
    face_analysis: Any  # insightface.app.FaceAnalysis
    face_align: ModuleType  # insightface.utils.face_align
    version: str


def import_insightface() -> InsightFaceModules:
    """Import ONNX Runtime, then InsightFace.

    Raises:
        MissingDependencyError: either is missing or fails to import; the message has the pip command.
    """
    onnxruntime = _import("onnxruntime", "onnxruntime")
    app = _import("insightface.app", "insightface")
    face_align = _import("insightface.utils.face_align", "insightface")
    version = getattr(sys.modules.get("insightface"), "__version__", "unknown")
    return InsightFaceModules(onnxruntime, app.FaceAnalysis, face_align, version)


def execution_providers(onnxruntime: ModuleType, provider: str) -> list[str]:
    """ONNX Runtime providers for the node's `provider`, CPU as fallback.

    Raises:
        MissingDependencyError: the installed ONNX Runtime lacks it; the message names the package to install.
    """
    if provider not in PROVIDERS:
        raise InvalidOptionError(f"Unknown provider '{provider}'; choose one of {', '.join(PROVIDERS)}.")
    name, package = PROVIDERS[provider]
    available = list(onnxruntime.get_available_providers())
    if name not in available:
        raise MissingDependencyError(
            f"The installed ONNX Runtime ({getattr(onnxruntime, '__version__', '?')}) has no {provider} provider "
            f"({name}); it offers {', '.join(available) or 'none'}. Choose one of those, or replace ONNX Runtime "
            f"with the {provider} build: \"{sys.executable}\" -m pip uninstall -y onnxruntime, then "
            f"{pip_command(package)}.")
    return [name] if name == PROVIDERS["CPU"][0] else [name, PROVIDERS["CPU"][0]]


@dataclass(eq=False)
class FaceAnalysisModel:
    """The FACE_ANALYSIS value: a prepared InsightFace `FaceAnalysis` (detector + recognizer) and its alignment."""

    app: Any
    face_align: ModuleType
    pack: ModelPack
    provider: str
    version: str

    def __repr__(self) -> str:
        return f"FaceAnalysisModel({self.pack.name}, {self.provider}, insightface {self.version})"


def _build_app(modules: InsightFaceModules, pack: ModelPack, providers: list[str]) -> Any:
    try:
        app = modules.face_analysis(name=pack.name, root=pack.root, providers=providers, allowed_modules=MODULES)
    except AssertionError as e:  # InsightFace asserts that the pack has a detector
        raise MissingModelError(
            f"InsightFace pack '{pack.name}' in {pack.path} has no face detection model (such as det_10g.onnx); "
            "use the complete buffalo_l pack.") from e
    except Exception as e:  # ONNX Runtime's load errors (InvalidProtobuf, Fail, ...) derive from Exception only
        raise MissingModelError(
            f"InsightFace pack '{pack.name}' in {pack.path} could not be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); a file is damaged, incomplete or not an InsightFace model. "
            "Download the pack again.") from e
    if "recognition" not in app.models:
        raise MissingModelError(
            f"InsightFace pack '{pack.name}' in {pack.path} has no face recognition model (an ArcFace .onnx such "
            "as w600k_r50.onnx), which FaceID needs for the identity embedding; use the complete buffalo_l pack.")
    return app


def load_face_analysis(pack: ModelPack, provider: str) -> FaceAnalysisModel:
    """Build and prepare InsightFace on an existing pack (`insightface_folder.find_pack` checked it).

    Raises:
        MissingDependencyError: InsightFace, ONNX Runtime or the provider is missing.
        MissingModelError: the pack lacks a detector or a recognizer, or a file is damaged.
    """
    modules = import_insightface()
    providers = execution_providers(modules.onnxruntime, provider)
    app = _build_app(modules, pack, providers)
    size = DETECTION_SIZES[0]
    context = CPU_CONTEXT if provider == "CPU" else DEVICE_CONTEXT
    app.prepare(ctx_id=context, det_thresh=DETECTION_THRESHOLD, det_size=(size, size))
    log.info("InsightFace %s: pack '%s' on %s", modules.version, pack.name, providers[0])
    return FaceAnalysisModel(app, modules.face_align, pack, provider, modules.version)
