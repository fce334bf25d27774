"""Every node the pack registers documents itself: a DESCRIPTION, a tooltip on every input, output tooltips, and a
help page web/docs/<NodeId>.md (served through WEB_DIRECTORY) that covers each input, a typical chain and the
common errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.host.comfy_env import PACK_DIR

DOCS = PACK_DIR / "web" / "docs"
SECTIONS = ("## Inputs", "## Typical chain", "## Common errors")


def _registered() -> list[str]:
    """Node ids, read without a host: the mappings are built when the host imports the pack."""
    import ast

    tree = ast.parse((PACK_DIR / "nodes" / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "NODE_CLASS_MAPPINGS":
            return sorted(key.value for key in node.value.keys)
    raise AssertionError("nodes/__init__.py defines no NODE_CLASS_MAPPINGS")


@pytest.mark.parametrize("node_id", _registered())
def test_node_has_description_tooltips_and_a_help_page(node_id: str, host_pack) -> None:
    cls = host_pack.node_class_mappings[node_id]
    assert cls.DESCRIPTION.strip()
    spec = cls.INPUT_TYPES()
    inputs = {**spec.get("required", {}), **spec.get("optional", {})}
    for name, entry in inputs.items():
        assert len(entry) > 1 and entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    if cls.RETURN_TYPES:
        assert len(getattr(cls, "OUTPUT_TOOLTIPS", ())) == len(cls.RETURN_TYPES), f"{node_id} output tooltips"
    page = DOCS / f"{node_id}.md"
    assert page.is_file(), f"missing help page {page.relative_to(PACK_DIR)}"
    text = page.read_text()
    assert text.startswith("# ") and all(section in text for section in SECTIONS), node_id
    missing = [name for name in inputs if not _documented(name, text)]
    assert not missing, f"{node_id}: the help page does not describe {missing}"


def _documented(name: str, text: str) -> bool:
    """`name` appears in bold or in backticks in the first cell of a table row (numbered inputs such as weight_2 may
    be written as one "weight_1 … 4" entry)."""
    stem = re.escape(re.sub(r"_\d+$", "_", name))
    return re.search(r"\*\*[^*]*" + stem + r"|^\|[^|\n]*`" + stem, text, flags=re.M) is not None


def test_every_help_page_belongs_to_a_node() -> None:
    assert {p.stem for p in DOCS.glob("*.md")} == set(_registered())


def test_the_host_serves_the_web_directory(host_pack) -> None:
    import nodes

    served = nodes.EXTENSION_WEB_DIRS.get(host_pack.folder_name)
    assert served is not None and Path(served).resolve() == (PACK_DIR / "web").resolve()

