"""Every shipped workflow runs: converted to the API format as the frontend does it, validated by the host, and
executed by the host's executor on tiny stand-in models under the standard file names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.host import graph
from tests.host.workflow_runner import has_muted, load, run_workflow

WORKFLOWS = sorted((Path(__file__).parents[2] / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def runner(comfy_host, tiny_clip_vision) -> graph.GraphRunner:
    """One executor for all workflows: loaders shared between them stay cached, as in the UI."""
    graph.register_harness_nodes(lambda: tiny_clip_vision.host)
    return graph.GraphRunner()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_in_the_host(path: Path, runner, standins, host_pack) -> None:
    workflow = load(path)
    runs = [run_workflow(workflow, runner, standins)]
    if has_muted(workflow):  # optional parts the Note asks to enable (e.g. load what the first run saved)
        runs.append(run_workflow(workflow, runner, standins, include_muted=True))
    for run in runs:
        assert run.result.success
        saved = [node_id for node_id, node in run.executed.items() if node["class_type"] == "SaveImage"]
        for node_id in saved:
            images = run.result.output(run.executed[node_id]["inputs"]["images"][0])
            assert images.ndim == 4 and torch.isfinite(images).all()
