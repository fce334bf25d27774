"""The core never touches the host: no `ip_adapter/*.py` imports ComfyUI modules or reaches outside the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "ip_adapter"
HOST_MODULES = frozenset({"comfy", "folder_paths", "nodes", "server", "comfy_extras", "comfy_api"})
#: `from . import x` stays inside a top-level package; `from .. import x` leaves it.
MAX_RELATIVE_LEVEL = 1
DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _dynamic_target(node: ast.Call) -> str | None:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in DYNAMIC_IMPORTERS and node.args and isinstance(node.args[0], ast.Constant):
        return str(node.args[0].value)
    return None


def forbidden_imports(source: str, max_level: int = MAX_RELATIVE_LEVEL) -> list[str]:
    """Every host import or package-escaping relative import in `source`, as readable strings (`max_level`: the
    deepest relative import that stays inside `ip_adapter`, 1 plus the module's subpackage depth)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if _top(a.name) in HOST_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if node.level > max_level:
                found.append(f"from {'.' * node.level}{node.module or ''} import ...")
            elif node.level == 0 and _top(node.module or "") in HOST_MODULES:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and (target := _dynamic_target(node)) and _top(target) in HOST_MODULES:
            found.append(f"dynamic import of {target}")
    return found


def _package_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def _max_level(path: Path) -> int:
    return MAX_RELATIVE_LEVEL + len(path.relative_to(PACKAGE_DIR).parts) - 1


#: Optional packages (training, evaluation): imported where used, never when a module is imported.
OPTIONAL_MODULES = frozenset({"accelerate", "tensorboard", "diffusers", "transformers", "PIL", "tqdm", "webdataset"})


def module_level_imports(source: str) -> set[str]:
    """Top-level package names imported by the module's own top-level statements (not inside functions)."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names |= {_top(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(_top(node.module or ""))
    return names


def test_package_files_are_found() -> None:
    names = {p.name for p in _package_files()}
    assert {"__init__.py", "attention.py", "checkpoint.py", "layout.py"} <= names


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: p.relative_to(PACKAGE_DIR).as_posix())
def test_core_module_has_no_host_import(path: Path) -> None:
    assert forbidden_imports(path.read_text(encoding="utf-8"), _max_level(path)) == []


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: p.relative_to(PACKAGE_DIR).as_posix())
def test_optional_packages_are_imported_only_where_used(path: Path) -> None:
    assert module_level_imports(path.read_text(encoding="utf-8")) & OPTIONAL_MODULES == set()


def test_subpackages_are_checked() -> None:
    names = {p.relative_to(PACKAGE_DIR).as_posix() for p in _package_files()}
    assert {"train/loop.py", "evaluate/cli.py"} <= names
    assert _max_level(PACKAGE_DIR / "train" / "loop.py") == 2


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import comfy.model_management", ["import comfy.model_management"]),
        ("import torch, folder_paths", ["import folder_paths"]),
        ("from comfy_extras.nodes_pag import x", ["from comfy_extras.nodes_pag import ..."]),
        ("from nodes import NODE_CLASS_MAPPINGS", ["from nodes import ..."]),
        ("def f():\n    import server\n", ["import server"]),
        ("from comfy_api.latest import io", ["from comfy_api.latest import ..."]),
        ("from ..nodes import patch", ["from ..nodes import ..."]),
        ("from .. import tests", ["from .. import ..."]),
        ("importlib.import_module('comfy.utils')", ["dynamic import of comfy.utils"]),
        ("from .layout import SD15_LAYOUT\nimport torch\nfrom safetensors import safe_open", []),
        ("import comfyui_helpers", []),
    ],
)
def test_checker_flags_what_it_should(source: str, expected: list[str]) -> None:
    """The checker itself can fail: each forbidden form is caught, and look-alikes are not."""
    assert forbidden_imports(source) == expected
