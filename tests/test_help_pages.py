"""Help pages (web/docs/<node id>.md, served from the pack's WEB_DIRECTORY): one per node added for animation, batches
and large references, naming every input and output of the contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract import NODES

ROOT = Path(__file__).parents[1]
DOCUMENTED = ["ApplyIPAdapterBatch", "FrameWeights", "ApplyIPAdapterTiled"]
OUTPUT_NAMES = {"FrameWeights": ["weights", "weights_inverted", "total_frames"],
                "ApplyIPAdapterTiled": ["MODEL", "tiles", "masks"], "ApplyIPAdapterBatch": ["MODEL"]}


@pytest.mark.parametrize("node_id", DOCUMENTED)
def test_help_page_names_every_input_and_output(node_id: str) -> None:
    page = (ROOT / "web" / "docs" / f"{node_id}.md").read_text()
    display, required, optional, _ = NODES[node_id]
    assert page.startswith(f"# {display}\n")
    for name, _, _ in required + optional:
        assert f"`{name}`" in page, name
    for name in OUTPUT_NAMES[node_id]:
        assert f"`{name}`" in page, name


def test_the_pack_serves_its_web_directory() -> None:
    source = (ROOT / "__init__.py").read_text()
    assert 'WEB_DIRECTORY = "./web"' in source and (ROOT / "web" / "docs").is_dir()

