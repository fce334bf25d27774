"""Load InsightFace: packs listed from every registered insightface folder, nothing downloaded, and a clear error with
the exact fix for each way it can fail; the pack imports and its other nodes work without insightface/onnxruntime."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.faceid_standins import DETECTOR_FILE, RECOGNIZER_FILE, require_faceid
from tests.host.faceid_setup import STANDIN, FaceNodes, standin_pack
from tests.host.ipa_setup import adapter_groups, reference_images, write_adapter

require_faceid()

OPTIONAL = ("insightface", "insightface.app", "insightface.utils", "insightface.utils.face_align", "onnxruntime")


@pytest.fixture(scope="module")
def nodes(host_pack) -> FaceNodes:
    return FaceNodes.of(host_pack)


@pytest.fixture
def extra_root(tmp_path, host_models):
    """A second registered insightface folder (an extra_model_paths.yaml entry), removed afterwards."""
    import folder_paths

    standin_pack(host_models)
    paths = folder_paths.folder_names_and_paths["insightface"][0]
    paths.append(str(tmp_path))
    yield tmp_path / "models"
    paths.remove(str(tmp_path))


def _pack_with(root: Path, name: str, *files: str, source: Path | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = folder / file
        target.write_bytes((source / file).read_bytes() if source is not None else b"not an onnx model")
    return folder


def test_packs_of_every_root_are_listed_buffalo_l_first(nodes, extra_root) -> None:
    _pack_with(extra_root, "buffalo_l", "w600k_r50.onnx")
    _pack_with(extra_root, "empty")
    listed = nodes.load_insightface.INPUT_TYPES()["required"]["model_name"][0]
    assert listed[0] == "buffalo_l" and STANDIN in listed and "empty" not in listed
    providers = nodes.load_insightface.INPUT_TYPES()["required"]["provider"][0]
    assert providers == ["CPU", "CUDA", "ROCM", "CoreML", "DirectML", "OpenVINO"]


@pytest.mark.parametrize("make, state", [(lambda root: None, "does not exist"),
                                         (lambda root: _pack_with(root, "antelopev2"), "is empty"),
                                         (lambda root: _pack_with(root / "antelopev2", "antelopev2", "glintr100.onnx"),
                                          "one level too deep")],
                         ids=["missing", "empty", "nested"])
def test_a_missing_pack_says_where_its_files_go_and_never_downloads(nodes, host_models, extra_root, make,
                                                                   state) -> None:
    make(extra_root)
    message = nodes.load_insightface.VALIDATE_INPUTS("antelopev2")
    assert isinstance(message, str) and state in message and "scrfd_10g_bnkps.onnx" in message
    folder = extra_root if state != "does not exist" else host_models.folder("insightface") / "models"
    assert str(folder / "antelopev2") in message
    with pytest.raises(nodes.core.MissingModelError, match="never downloaded"):
        nodes.load_insightface.load("antelopev2", "CPU")
    assert nodes.load_insightface.VALIDATE_INPUTS(standin_pack(host_models)) is True


def test_a_provider_the_runtime_lacks_names_the_package(nodes, host_models) -> None:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    runtime = nodes.module.nodes.insightface_runtime
    missing = next(p for p, (name, _) in runtime.PROVIDERS.items() if name not in available)
    with pytest.raises(nodes.core.MissingDependencyError) as error:
        nodes.load_insightface.load(standin_pack(host_models), missing)
    message = str(error.value)
    assert runtime.PROVIDERS[missing][1] in message and sys.executable in message and "CPUExecutionProvider" in message
    with pytest.raises(nodes.core.InvalidOptionError, match="Unknown provider 'Vulkan'"):
        nodes.load_insightface.load(standin_pack(host_models), "Vulkan")  # e.g. a workflow edited by hand


@pytest.mark.parametrize("hidden, package", [(OPTIONAL[:-1], "insightface"), (OPTIONAL[-1:], "onnxruntime")])
def test_missing_insightface_or_onnxruntime_gives_the_pip_command(nodes, host_models, monkeypatch, hidden,
                                                                   package) -> None:
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(nodes.core.MissingDependencyError) as error:
        nodes.load_insightface.load(standin_pack(host_models), "CPU")
    message = str(error.value)
    assert f"'{package}'" in message and f'"{sys.executable}" -m pip install insightface onnxruntime' in message


@pytest.mark.parametrize("files, problem", [((DETECTOR_FILE,), "no face recognition model"),
                                            ((RECOGNIZER_FILE,), "no face detection model"),
                                            (("broken.onnx",), "could not be loaded")],
                         ids=["detector-only", "recognizer-only", "damaged"])
def test_incomplete_or_damaged_packs(nodes, host_models, extra_root, files, problem) -> None:
    source = host_models.folder("insightface") / "models" / STANDIN
    folder = _pack_with(extra_root, "incomplete", *[f for f in files if f != "broken.onnx"], source=source)
    if "broken.onnx" in files:
        (folder / "broken.onnx").write_bytes(b"\x00not a protobuf")
    with pytest.raises(nodes.core.MissingModelError, match=problem):
        nodes.load_insightface.load("incomplete", "CPU")


def test_the_pack_imports_and_its_other_nodes_work_without_the_optional_packages(
        host_pack, host_models, tiny_sd15, tiny_clip_vision, monkeypatch) -> None:
    """A fresh import of the whole pack with insightface and onnxruntime hidden, then Apply IP-Adapter through it."""
    for name in OPTIONAL:
        monkeypatch.setitem(sys.modules, name, None)
    package = Path(host_pack.module.__file__).parent
    name = "ipadapter_pack_without_faceid"
    spec = importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    try:
        mappings = module.NODE_CLASS_MAPPINGS
        assert set(host_pack.node_class_mappings) == set(mappings)
        groups = adapter_groups("base", tiny_sd15, tiny_clip_vision)
        filename = write_adapter(host_models, groups, "no-faceid.safetensors")
        with torch.inference_mode():
            adapter = mappings["LoadIPAdapter"]().load(filename)[0]
            prompt = mappings["EncodeImagePrompt"]().encode(tiny_clip_vision.host, reference_images(1), "center")[0]
            model = mappings["ApplyIPAdapter"]().apply(tiny_sd15.patcher, adapter, prompt, 1.0, "linear", "concat",
                                                       0.0, 1.0, "V only")[0]
        assert len(model.model_options["transformer_options"]["patches_replace"]["attn2"]) == 16
        with pytest.raises(module.ip_adapter.MissingDependencyError, match="pip install"):
            mappings["LoadInsightFace"]().load(STANDIN, "CPU")
    finally:
        for key in [k for k in sys.modules if k.startswith(name + ".")]:
            del sys.modules[key]
