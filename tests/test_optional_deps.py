"""The FaceID packages stay optional: no module of the pack imports insightface, onnxruntime, onnx or OpenCV when it
is imported (only `nodes/insightface_runtime.py` does, inside a function, when a face model is loaded). The host test
test_faceid_load.py imports the whole pack with them hidden and runs its other nodes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parents[1]
OPTIONAL = frozenset({"insightface", "onnxruntime", "onnx", "cv2"})
RUNTIME_MODULE = PACK / "nodes" / "insightface_runtime.py"


def _pack_files() -> list[Path]:
    return [PACK / "__init__.py", *sorted((PACK / "ip_adapter").glob("*.py")), *sorted((PACK / "nodes").glob("*.py"))]


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Imported top-level package names of statements that run at import time (not inside functions or classes)."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module or "").split(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += [n for field in ("body", "orelse", "finalbody", "handlers") for n in getattr(node, field, [])]
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body
    return found


@pytest.mark.parametrize("path", _pack_files(), ids=lambda p: str(p.relative_to(PACK)))
def test_no_optional_package_is_imported_at_import_time(path: Path) -> None:
    assert not set(_module_level_imports(ast.parse(path.read_text(encoding="utf-8")))) & OPTIONAL


def _all_imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add((node.module or "").split(".")[0])
    return names


def test_no_module_imports_them_anywhere_but_through_the_runtime_module() -> None:
    """The runtime module imports them by name with importlib (so a missing one becomes the pack's error)."""
    assert all(not _all_imports(ast.parse(p.read_text(encoding="utf-8"))) & OPTIONAL for p in _pack_files())
    assert "importlib.import_module(name)" in RUNTIME_MODULE.read_text(encoding="utf-8")


def test_the_checker_sees_module_level_imports_only() -> None:
    source = ("import os\ntry:\n    import insightface\nexcept ImportError:\n    pass\n"
              "def f():\n    import onnxruntime\n")
    assert sorted(_module_level_imports(ast.parse(source))) == ["insightface", "os"]
    assert _all_imports(ast.parse(source)) == {"os", "insightface", "onnxruntime"}
