"""Host test harness: the pack inside a real ComfyUI, started in-process on CPU.

A host test is one that uses the `comfy_host` fixture (directly or through the fixtures below) or is marked `host`;
it gets the `host` marker. Host tests need a ComfyUI checkout: COMFYUI_PATH, else the nearest parent folder of the
pack that is one (the normal ComfyUI/custom_nodes/<pack> install). Without one they are skipped, with the reason in
the -ra lines and a banner in the terminal summary; IPADAPTER_REQUIRE_HOST=1 makes that a failure instead. A
COMFYUI_PATH that is not a checkout always fails. Tests here that use none of these fixtures run everywhere; never
import ComfyUI modules at a test module's top level (collection happens before the host starts).

Host tests run after all other tests: starting the host puts ComfyUI (and ComfyUI/comfy) first on sys.path and
binds top-level names such as `nodes` and `utils` to ComfyUI's modules for the rest of the process.

Fixtures (session-scoped unless noted; models are seeded and shared, so clone a ModelPatcher before patching it):
    comfy_host -> comfy_env.HostInfo         host started, built-in extra nodes loaded, folders in a scratch dir
    host_pack -> comfy_env.LoadedPack        the pack as nodes.load_custom_node loaded it (at host start)
    tiny_sd15 / tiny_sdxl -> TinyUNet        host ModelPatcher + diffusers twin with the same weights
    tiny_clip_vision -> TinyClipVision       host ClipVisionModel (CLIP_VISION) + transformers twin
    host_models -> graph.ModelFiles          model files in the host's scratch model folders, written on demand
    host_graph -> graph.GraphRunner          (function-scoped) runs API-format prompts through the host executor
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.host import comfy_env, graph, tiny_models

LOCATION = comfy_env.locate_comfyui()
_STATE: dict = {"marked_skip": set(), "skipped": 0, "ran": {}, "host": None, "pack": None, "pack_error": None,
                "tiny": {}}


def _is_host_item(item: pytest.Item) -> bool:
    return "comfy_host" in getattr(item, "fixturenames", ()) or item.get_closest_marker("host") is not None


def pytest_report_header(config: pytest.Config) -> str:
    if LOCATION.path is not None:
        return f"ComfyUI host: {LOCATION.path} (via {LOCATION.source})"
    if LOCATION.problem is not None:
        return f"ComfyUI host: INVALID, {LOCATION.problem}"
    return f"ComfyUI host: not found, host tests will be SKIPPED ({comfy_env.HOW_TO_POINT})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    host_items = [item for item in items if _is_host_item(item)]
    if not host_items:
        return
    skip = LOCATION.path is None and LOCATION.problem is None and not comfy_env.host_required()
    for item in host_items:
        item.add_marker(pytest.mark.host)
        if skip:
            item.add_marker(pytest.mark.skip(reason=LOCATION.skip_reason))
            _STATE["marked_skip"].add(item.nodeid)
    others = [item for item in items if not _is_host_item(item)]
    items[:] = others + host_items


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.when == "setup" and report.nodeid in _STATE["marked_skip"]:
        _STATE["skipped"] += 1
    if report.when == "call" and "host" in report.keywords:
        _STATE["ran"][report.outcome] = _STATE["ran"].get(report.outcome, 0) + 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Release host models while ComfyUI's modules are still intact (at interpreter exit, ModelPatcher.__del__ would
    otherwise run after the host's module globals are gone and print tracebacks)."""
    if _STATE["host"] is None:
        return
    import gc

    import comfy.model_management

    _STATE["tiny"].clear()
    comfy.model_management.unload_all_models()
    gc.collect()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    ran = _STATE["ran"]
    if ran:
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(ran.items()))
        host = _STATE["host"]
        where = f"ComfyUI {host.version} at {host.root}" if host is not None else "ComfyUI"
        terminalreporter.write_sep("=", f"host tests ran in {where}: {counts}", bold=True)
    if not _STATE["skipped"]:
        return
    terminalreporter.write_sep("!", "HOST TESTS SKIPPED", yellow=True, bold=True)
    terminalreporter.write_line(f"{_STATE['skipped']} host tests did not run: no ComfyUI checkout was found.")
    terminalreporter.write_line(f"To run them, {comfy_env.HOW_TO_POINT}.", yellow=True)
    terminalreporter.write_line(f"Set {comfy_env.REQUIRE_ENV_VAR}=1 to make a missing host fail the run.")


def _tiny_unet(kind: str) -> tiny_models.TinyUNet:
    cache = _STATE["tiny"]
    if kind not in cache:
        cache[kind] = tiny_models.build_tiny_unet(kind)
    return cache[kind]


def _tiny_clip_vision() -> tiny_models.TinyClipVision:
    cache = _STATE["tiny"]
    if "clip_vision" not in cache:
        cache["clip_vision"] = tiny_models.build_tiny_clip_vision(_STATE["host"].scratch / "configs")
    return cache["clip_vision"]


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[comfy_env.HostInfo]:
    """Start ComfyUI in-process on CPU, then load the pack as a custom node (its failure surfaces in host_pack).

    The scratch model files (hundreds of MB, all regenerable) are deleted when the session ends."""
    if LOCATION.problem is not None:
        pytest.fail(LOCATION.problem, pytrace=False)
    if LOCATION.path is None:
        if comfy_env.host_required():
            pytest.fail(f"{comfy_env.REQUIRE_ENV_VAR} is set but {LOCATION.skip_reason}", pytrace=False)
        pytest.skip(LOCATION.skip_reason)
    if _STATE["host"] is None:
        _STATE["host"] = comfy_env.start_host(LOCATION, tmp_path_factory.mktemp("comfy-host"))
        try:
            _STATE["pack"] = comfy_env.load_pack()
        except comfy_env.PackLoadError as error:
            _STATE["pack_error"] = error
    yield _STATE["host"]
    shutil.rmtree(_STATE["host"].models_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def host_pack(comfy_host: comfy_env.HostInfo) -> comfy_env.LoadedPack:
    if _STATE["pack_error"] is not None:
        pytest.fail(str(_STATE["pack_error"]), pytrace=False)
    return _STATE["pack"]


@pytest.fixture(scope="session")
def tiny_sd15(comfy_host: comfy_env.HostInfo) -> tiny_models.TinyUNet:
    return _tiny_unet(tiny_models.SD15)


@pytest.fixture(scope="session")
def tiny_sdxl(comfy_host: comfy_env.HostInfo) -> tiny_models.TinyUNet:
    return _tiny_unet(tiny_models.SDXL)


@pytest.fixture(scope="session")
def tiny_clip_vision(comfy_host: comfy_env.HostInfo) -> tiny_models.TinyClipVision:
    return _tiny_clip_vision()


@pytest.fixture(scope="session")
def host_models(comfy_host: comfy_env.HostInfo) -> graph.ModelFiles:
    return graph.ModelFiles(build_unet=_tiny_unet, clip_vision=_tiny_clip_vision)


@pytest.fixture
def host_graph(comfy_host: comfy_env.HostInfo) -> graph.GraphRunner:
    """A fresh executor; the harness nodes (IPAHarnessConditioning / Image / CLIPVision) are registered."""
    graph.register_harness_nodes(lambda: _tiny_clip_vision().host)
    return graph.GraphRunner()
