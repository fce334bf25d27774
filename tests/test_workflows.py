"""The shipped example workflows are valid UI-format (v0.4) graphs that use our nodes as the contract defines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.contract import FLOAT_RANGES, FRONTEND_ONLY, NODES, widget_inputs

WORKFLOWS = sorted((Path(__file__).parents[1] / "workflows").glob("*.json"))
#: Core node ids the examples may use (checked against a real host in tests/host).
CORE_NODES = {"CheckpointLoaderSimple", "CLIPVisionLoader", "LoadImage", "CLIPTextEncode", "EmptyLatentImage",
              "KSampler", "VAEDecode", "SaveImage", "PreviewImage", "LoraLoader", "ControlNetLoader",
              "ControlNetApplyAdvanced", "UNETLoader", "DualCLIPLoader", "TripleCLIPLoader", "VAELoader",
              "FluxGuidance", "EmptySD3LatentImage", "Note"}


def test_there_are_example_workflows():
    assert len(WORKFLOWS) >= 2


@pytest.fixture(params=WORKFLOWS, ids=lambda p: p.name)
def workflow(request) -> dict:
    return json.loads(request.param.read_text())


def test_ui_format_and_links_are_consistent(workflow):
    assert workflow["version"] == 0.4
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, type_ in workflow["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == type_
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[dst]["inputs"][dst_slot]["type"] == type_


def test_only_known_node_ids(workflow):
    unknown = {n["type"] for n in workflow["nodes"]} - set(NODES) - CORE_NODES - FRONTEND_ONLY
    assert not unknown


def test_every_node_of_the_pack_is_in_an_example() -> None:
    used = {n["type"] for path in WORKFLOWS for n in json.loads(path.read_text())["nodes"]}
    assert set(NODES) <= used


def test_our_widgets_follow_the_contract(workflow):
    ours = [n for n in workflow["nodes"] if n["type"] in NODES]
    assert ours
    for node in ours:
        widgets = widget_inputs(node["type"])
        assert len(node["widgets_values"]) == len(widgets), node["type"]
        for (name, kind, _), value in zip(widgets, node["widgets_values"]):
            if isinstance(kind, list):
                assert value in kind, (node["type"], name, value)
            elif name in FLOAT_RANGES:
                low, high = FLOAT_RANGES[name]
                assert low <= value <= high
