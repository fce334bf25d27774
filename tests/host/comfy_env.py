"""Finding a ComfyUI checkout and starting it in-process on CPU, the way its main.py does, for the host tests.

Nothing here imports ComfyUI at module import time: `comfy.model_management` probes the GPU when first imported, so
`comfy.cli_args.args.cpu` has to be set before it (comfy-host.md §16), and test modules are collected before any
fixture runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ENV_VAR = "COMFYUI_PATH"
REQUIRE_ENV_VAR = "IPADAPTER_REQUIRE_HOST"
PACK_DIR = Path(__file__).resolve().parents[2]
HOW_TO_POINT = (
    f"set {ENV_VAR}=/path/to/ComfyUI (a checkout holding main.py, folder_paths.py and comfy/), or run the tests "
    "from the pack installed as ComfyUI/custom_nodes/<pack>"
)
# Folders that hold host files rather than user models; everything else under models/ is redirected to scratch.
KEPT_FOLDERS = frozenset({"configs", "custom_nodes"})
# Top-level names of the pack that exist in ComfyUI's root as well; ours is already imported and must stay.
NEVER_EVICT = frozenset({"tests"})


@dataclass(frozen=True)
class ComfyLocation:
    """Where the host is, or why it is not there.

    `path` is None when no checkout was found (host tests are skipped) or when COMFYUI_PATH is wrong (`problem` says
    how, and the host tests fail instead of skipping, since the user asked for them).
    """

    path: Path | None
    source: str
    problem: str | None = None

    @property
    def skip_reason(self) -> str:
        return f"no ComfyUI checkout found for the host tests: {HOW_TO_POINT}"


@dataclass
class HostInfo:
    """A started host: where it lives and what the start-up had to work around."""

    root: Path
    version: str
    source: str
    scratch: Path
    models_dir: Path
    evicted_modules: list[str] = field(default_factory=list)
    extras_import_failed: list[str] = field(default_factory=list)


@dataclass
class LoadedPack:
    """The pack as ComfyUI's `load_custom_node` imported it.

    Attributes:
        module: the package module (sys.modules key = the pack directory path with '.' replaced by '_x_', as the
            host names directory packs; LOADED_MODULE_DIRS and RELATIVE_PYTHON_MODULE use the folder name).
        module_name: that sys.modules key.
        folder_name: the pack folder's name.
        node_class_mappings: the pack's own NODE_CLASS_MAPPINGS.
        display_name_mappings: the pack's own NODE_DISPLAY_NAME_MAPPINGS.
        registered: the pack's ids as they ended up in the host's global `nodes.NODE_CLASS_MAPPINGS`.
        log: WARNING-and-above records the host logged while loading the pack.
    """

    module: ModuleType
    module_name: str
    folder_name: str
    node_class_mappings: dict
    display_name_mappings: dict
    registered: dict
    log: list[str]


class PackLoadError(RuntimeError):
    """`nodes.load_custom_node` returned False; the host logs the traceback instead of raising it."""


def is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "folder_paths.py").is_file() and (path / "comfy").is_dir()


def locate_comfyui(pack_dir: Path = PACK_DIR, environ: os._Environ | dict = os.environ) -> ComfyLocation:
    """COMFYUI_PATH if set, else the nearest parent folder of the pack that is a ComfyUI checkout."""
    configured = environ.get(ENV_VAR, "").strip()
    if configured:
        path = Path(configured).expanduser().resolve()
        if is_comfyui(path):
            return ComfyLocation(path, f"{ENV_VAR}")
        return ComfyLocation(None, ENV_VAR, f"{ENV_VAR}={configured!r} is not a ComfyUI checkout: it needs main.py, "
                                            "folder_paths.py and comfy/; point it at the folder holding main.py")
    for parent in pack_dir.resolve().parents:
        if is_comfyui(parent):
            return ComfyLocation(parent, "parent folder of the pack")
    return ComfyLocation(None, "not found")


def host_required(environ: os._Environ | dict = os.environ) -> bool:
    """IPADAPTER_REQUIRE_HOST=1 turns a missing host into a failure (for CI jobs that provide ComfyUI)."""
    return environ.get(REQUIRE_ENV_VAR, "").strip().lower() in {"1", "true", "yes"}


def _module_file(module: ModuleType) -> str | None:
    path = getattr(module, "__file__", None)
    if path is None:
        locations = getattr(module, "__path__", None)
        path = next(iter(locations), None) if locations else None
    return path


def _evict_shadowing_modules(root: Path) -> list[str]:
    """Drop already-imported top-level modules whose names ComfyUI's root provides from elsewhere.

    The pack has a top-level `nodes` package and ComfyUI a `nodes.py`; with the repo root on sys.path a test may have
    imported the pack's one as `nodes` before the host started, and every host module doing `import nodes` would then
    get it.
    """
    provided = {p.stem for p in root.glob("*.py")} | {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    evicted = []
    for name in sorted(provided - NEVER_EVICT):
        module = sys.modules.get(name)
        if module is None:
            continue
        location = _module_file(module)
        if location is not None and Path(location).resolve().is_relative_to(root):
            continue
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        evicted.append(name)
    return evicted


def _redirect_folders(folder_paths: ModuleType, models_dir: Path, scratch: Path) -> None:
    """Point every model folder, and output/input/temp/user, at scratch so tests see only their own files."""
    original = Path(folder_paths.models_dir)
    for name, (paths, _exts) in folder_paths.folder_names_and_paths.items():
        if name in KEPT_FOLDERS:
            continue
        moved = []
        for path in paths:
            try:
                moved.append(str(models_dir / Path(path).relative_to(original)))
            except ValueError:
                continue
        paths[:] = moved
    folder_paths.models_dir = str(models_dir)
    for setter, sub in (("set_output_directory", "output"), ("set_input_directory", "input"),
                        ("set_temp_directory", "temp"), ("set_user_directory", "user")):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
        getattr(folder_paths, setter)(str(scratch / sub))
    folder_paths.filename_list_cache.clear()


def start_host(location: ComfyLocation, scratch: Path, cpu: bool = True) -> HostInfo:
    """Import ComfyUI in this process on CPU and load its built-in extra nodes, as main.py does before custom nodes.

    Steps (main.py order): ComfyUI first on sys.path; `args.cpu = True` before `comfy.model_management`; `folder_paths`
    and the `utils` package before `nodes` (nodes.py puts ComfyUI/comfy/ at sys.path[0], after which `import utils`
    would find comfy/utils.py); then `nodes`, `execution` and `init_extra_nodes` without custom or API nodes. Bytecode
    goes to a temp prefix so the checkout is never written to.
    """
    root = location.path
    assert root is not None, location.problem or location.skip_reason
    if sys.pycache_prefix is None:
        sys.pycache_prefix = str(Path(tempfile.gettempdir()) / "ipadapter-host-pycache")
    evicted = _evict_shadowing_modules(root)
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))

    import comfy.cli_args  # argument parsing stays off (comfy.options): args come from an empty argv

    if "comfy.model_management" in sys.modules and comfy.cli_args.args.cpu != cpu:
        raise RuntimeError("comfy.model_management was imported before the host harness set args.cpu; import "
                           "ComfyUI only through the host fixtures")
    comfy.cli_args.args.cpu = cpu  # tests always run on the CPU; benchmarks may use a GPU
    import folder_paths
    import utils.extra_config  # noqa: F401  (binds `utils` to ComfyUI's package before nodes.py shadows it)

    models_dir = scratch / "models"
    _redirect_folders(folder_paths, models_dir, scratch)

    import comfy.model_management  # noqa: F401
    import execution  # noqa: F401

    import nodes

    failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)) or []
    import comfyui_version

    return HostInfo(root=root, version=comfyui_version.__version__, source=location.source, scratch=scratch,
                    models_dir=models_dir, evicted_modules=evicted, extras_import_failed=list(failed))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def load_pack(pack_dir: Path = PACK_DIR) -> LoadedPack:
    """Load the pack through `nodes.load_custom_node`, as `init_external_custom_nodes` does for each custom node.

    Core node ids are passed as `ignore`, as the host does, so the pack cannot replace them.

    Raises:
        PackLoadError: the host reported a failed import; the message carries the host's logged traceback.
    """
    import nodes

    path = str(pack_dir.resolve())
    core_ids = set(nodes.NODE_CLASS_MAPPINGS)
    handler = _Collect()
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    try:
        ok = asyncio.run(nodes.load_custom_node(path, ignore=core_ids, module_parent="custom_nodes"))
    finally:
        root_logger.removeHandler(handler)
    module_name = path.replace(".", "_x_")
    if not ok or module_name not in sys.modules:
        raise PackLoadError(f"ComfyUI could not load the pack from {path}:\n" + "\n".join(handler.lines))
    module = sys.modules[module_name]
    mappings = dict(getattr(module, "NODE_CLASS_MAPPINGS", {}) or {})
    registered = {k: nodes.NODE_CLASS_MAPPINGS[k] for k in mappings if nodes.NODE_CLASS_MAPPINGS.get(k) is mappings[k]}
    return LoadedPack(module=module, module_name=module_name, folder_name=pack_dir.name,
                      node_class_mappings=mappings,
                      display_name_mappings=dict(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}) or {}),
                      registered=registered, log=handler.lines)
