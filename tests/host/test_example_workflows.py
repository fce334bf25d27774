"""Every shipped workflow runs: converted to the API format as the frontend does it, validated by the host, and
executed by the host's executor on tiny stand-in models under the standard file names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.host import graph
from tests.host.test_animation_workflows import CROSSFADE, TILED
from tests.host.test_dit_workflows import FILES as DIT_WORKFLOWS
from tests.host.test_faceid_workflows import FACEID, PLUSV2
from tests.host.workflow_runner import has_muted, load, run_workflow

ALL_WORKFLOWS = sorted((Path(__file__).parents[2] / "workflows").glob("*.json"))
#: Workflows whose models need their own stand-ins (InsightFace packs, DiT checkpoints and text encoders, frame
#: batches under context windows); their modules run them in the host's executor the same way.
RUN_ELSEWHERE = {FACEID, PLUSV2, *DIT_WORKFLOWS.values(), CROSSFADE.name, TILED.name}
WORKFLOWS = [p for p in ALL_WORKFLOWS if p.name not in RUN_ELSEWHERE]


def test_every_workflow_runs_here_or_in_its_family_module() -> None:
    assert RUN_ELSEWHERE <= {p.name for p in ALL_WORKFLOWS}


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
        by_type = {}
        for node_id, node in run.executed.items():
            by_type.setdefault(node["class_type"], []).append(node_id)
        for node_id in by_type.get("SaveImage", []):
            assert len(run.result.ui[node_id]["images"]) == 1
            images = run.result.output(run.executed[node_id]["inputs"]["images"][0])
            assert images.ndim == 4 and torch.isfinite(images).all()
        for loaded_id in by_type.get("LoadImagePrompt", []):  # save, then load: the very prompt that was saved
            loaded, saved = run.result.output(loaded_id), run.result.output(by_type["CombineImagePrompts"][0])
            assert torch.equal(loaded.positive.image_embeds, saved.positive.image_embeds)
            assert torch.equal(loaded.negative.hidden_states, saved.negative.hidden_states)


@pytest.mark.parametrize("path", ALL_WORKFLOWS, ids=lambda p: p.stem)
def test_sockets_are_listed_as_the_frontend_lists_them(path: Path, host_pack) -> None:
    """Sockets in INPUT_TYPES order (required, then optional with the hollow shape), outputs as RETURN_TYPES, widget
    values one per widget (plus the UI-only extras) - what the frontend writes for these node definitions."""
    import nodes
    from tests.host.workflow_runner import NOTE_TYPES, _has_extra_value, _widget_spec, node_inputs

    for node in load(path)["nodes"]:
        if node["type"] in NOTE_TYPES:
            continue
        cls = nodes.NODE_CLASS_MAPPINGS[node["type"]]
        specs = node_inputs(cls)
        sockets = [(name, spec[0], optional) for name, spec, optional in specs if not _widget_spec(spec)[0]]
        listed = [(s["name"], s["type"], s.get("shape") == 7) for s in node["inputs"] if "widget" not in s]
        assert listed == sockets, node["type"]
        assert [o["type"] for o in node["outputs"]] == list(cls.RETURN_TYPES), node["type"]
        widgets = [(n, s, _widget_spec(s)[1]) for n, s, _ in specs if _widget_spec(s)[0]]
        assert len(node["widgets_values"]) == sum(1 + _has_extra_value(n, s, o) for n, s, o in widgets), node["type"]
