"""The shipped example workflows as files: valid UI-format (v0.4) graphs, laid out without overlapping nodes, links
consistent at both ends, a Note in each, the pack's widgets as the node contract defines them, and the standard file
names users already have (with their download addresses). Running them in the host: tests/host/test_example_workflows.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

from ip_adapter.presets import CLIP_VISION_FILES, PRESET_TABLE
from tests.contract import FLOAT_RANGES, NODES, widget_inputs, widget_values

WORKFLOWS_DIR = Path(__file__).parents[1] / "workflows"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
REQUIRED = {
    "ip_adapter_sd15_basic", "ip_adapter_sdxl_basic", "ip_adapter_presets", "ip_adapter_image_and_text",
    "ip_adapter_img2img", "ip_adapter_inpainting", "ip_adapter_controlnet_lora", "ip_adapter_two_references",
    "ip_adapter_style_composition", "ip_adapter_regional", "ip_adapter_negative_noise",
    "ip_adapter_weighted_saved_prompts", "ip_adapter_sdxl_style_transfer",
}
NOTES = {"Note", "MarkdownNote"}
#: Core node ids the examples may use (their inputs are checked against a real host in tests/host).
CORE_NODES = {"CheckpointLoaderSimple", "CLIPVisionLoader", "LoadImage", "CLIPTextEncode", "EmptyLatentImage",
              "KSampler", "VAEDecode", "VAEEncode", "SaveImage", "LoraLoader", "ControlNetLoader",
              "ControlNetApplyAdvanced", "SetLatentNoiseMask", "SolidMask", "MaskComposite", "ConditioningSetMask",
              "ConditioningCombine", "PreviewImage", "UNETLoader", "DualCLIPLoader", "TripleCLIPLoader",
              "VAELoader", "FluxGuidance", "EmptySD3LatentImage", "ContextWindowsManual", "MaskToImage"} | NOTES
TITLE_HEIGHT = 30
#: The released names of the FLUX.1 (XLabs) and SD3.5 Large (InstantX) files, which no preset lists.
DIT_FILES = {
    "ckpt_name": {"sd3.5_large.safetensors"},
    "clip_name": {"clip-vit-large-patch14.safetensors", "sigclip_vision_patch14_384.safetensors"},
    "ipadapter_file": {"ip_adapter.safetensors", "ip-adapter.bin"},
}
STANDARD_FILES = {
    "ckpt_name": {"v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"} | DIT_FILES["ckpt_name"],
    "clip_name": {w.save_as for w in CLIP_VISION_FILES.values()} | DIT_FILES["clip_name"],
    "ipadapter_file": {files.adapter.save_as for files in PRESET_TABLE.values()} | DIT_FILES["ipadapter_file"],
    "control_net_name": {"control_v11p_sd15_canny_fp16.safetensors"},
}


def test_every_required_workflow_is_shipped() -> None:
    assert REQUIRED <= {p.stem for p in WORKFLOWS}


def test_every_node_of_the_pack_appears_in_an_example() -> None:
    used = {n["type"] for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"]}
    assert set(NODES) <= used, set(NODES) - used


@pytest.fixture(params=WORKFLOWS, ids=lambda p: p.stem)
def workflow(request) -> dict:
    return json.loads(request.param.read_text())


def test_ui_format(workflow) -> None:
    assert workflow["version"] == 0.4
    ids = [n["id"] for n in workflow["nodes"]]
    assert len(ids) == len(set(ids)) and workflow["last_node_id"] >= max(ids)
    assert workflow["last_link_id"] >= max((link[0] for link in workflow["links"]), default=0)
    assert {n["type"] for n in workflow["nodes"]} <= set(NODES) | CORE_NODES


def test_each_workflow_explains_itself_in_a_note(workflow) -> None:
    notes = [n for n in workflow["nodes"] if n["type"] in NOTES]
    assert notes and all(len(n["widgets_values"][0]) > 80 and not n.get("inputs") for n in notes)


def _box(node: dict) -> tuple[float, float, float, float]:
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h  # the title bar is drawn above pos


def test_no_two_nodes_overlap(workflow) -> None:
    for a, b in combinations(workflow["nodes"], 2):
        ax0, ay0, ax1, ay1 = _box(a)
        bx0, by0, bx1, by1 = _box(b)
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (a["id"], a["type"], b["id"], b["type"])


def test_links_are_consistent_at_both_ends(workflow) -> None:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    table = {link[0]: link for link in workflow["links"]}
    assert len(table) == len(workflow["links"])
    for link_id, src, src_slot, dst, dst_slot, type_ in workflow["links"]:
        output, socket = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert output["type"] == type_ == socket["type"] and link_id in (output["links"] or [])
        assert socket["link"] == link_id and nodes[src]["order"] < nodes[dst]["order"]
    for node in nodes.values():
        for socket in node.get("inputs", []):
            assert socket["link"] is None or table[socket["link"]][3] == node["id"]
        for slot, output in enumerate(node.get("outputs", [])):
            assert all(table[i][1:3] == [node["id"], slot] for i in output["links"] or [])


def test_our_widgets_follow_the_contract(workflow) -> None:
    for node in (n for n in workflow["nodes"] if n["type"] in NODES):
        widgets = widget_inputs(node["type"])
        named = widget_values(node["type"], node["widgets_values"])
        assert list(named) == [name for name, _, _ in widgets]
        for name, kind, _ in widgets:
            if isinstance(kind, list):
                assert named[name] in kind, (node["type"], name, named[name])
            elif name in FLOAT_RANGES:
                low, high = FLOAT_RANGES[name]
                assert low <= named[name] <= high, (node["type"], name)


def test_standard_file_names_with_download_addresses(workflow) -> None:
    for node in workflow["nodes"]:
        models = {m["name"]: m for m in node.get("properties", {}).get("models", [])}
        for name, allowed in STANDARD_FILES.items():
            if node["type"] in CORE_NODES | set(NODES) and name in _widget_names(node):
                value = _widget_names(node)[name]
                assert value in allowed, (node["type"], value)
                assert models[value]["url"].startswith("https://huggingface.co/"), value


def _widget_names(node: dict) -> dict:
    first = {"CheckpointLoaderSimple": "ckpt_name", "CLIPVisionLoader": "clip_name", "LoadIPAdapter": "ipadapter_file",
             "ControlNetLoader": "control_net_name"}.get(node["type"])
    return {first: node["widgets_values"][0]} if first else {}
