"""The animation and tiling example workflows run in the host's executor on tiny stand-ins: the 32-frame cross-fade
with context windows (two Apply IP-Adapter Batch nodes fed weights and weights_inverted by Frame Weights, then
ContextWindowsManual) and the tiled wide reference.

Each UI workflow is converted as the frontend converts it (tests/host/workflow_runner.ui_to_api), then its loaders are
pointed at tiny models: the checkpoint at the tiny SD1.5 UNet + TAESD, CLIP vision and text encoding at the harness
nodes, LoadImage at seeded images of the workflow's aspect ratio, the adapter at a tiny `plus` adapter; pixel sizes
are divided by 8 (a 64-pixel, 8-latent side) and samplers run one step. Frame counts, windows, schedules, weights and
every link stay as shipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.host import context_window_fix, graph
from tests.host.ipa_setup import adapter_groups, write_adapter
from tests.host.workflow_runner import ui_to_api

WORKFLOWS = Path(__file__).parents[2] / "workflows"
CROSSFADE = WORKFLOWS / "ip_adapter_sd15_crossfade_context_windows.json"
TILED = WORKFLOWS / "ip_adapter_sd15_tiled_wide_reference.json"
PIXEL_DIVISOR = 8
STEPS = 1
host_context_window_step_fix = context_window_fix.host_context_window_step_fix


@pytest.fixture(scope="module")
def standins(host_pack, host_models, tiny_sd15, tiny_clip_vision) -> dict[str, str]:
    groups = adapter_groups("plus", tiny_sd15, tiny_clip_vision, seed=81)
    return {"ckpt_name": host_models.checkpoint("sd15"),
            "ipadapter_file": write_adapter(host_models, groups, "workflows-plus_sd15.safetensors")}


def _on_standins(prompt: dict, files: dict[str, str], image_sizes: dict[str, tuple[int, int]]) -> dict:
    """The prompt with its loaders on tiny stand-ins and its pixel sizes / steps on the CPU budget (module doc)."""
    for node_id, node in prompt.items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind in ("CheckpointLoaderSimple", "LoadIPAdapter"):
            name = next(iter(inputs))
            inputs[name] = files[name]
        elif kind == "CLIPVisionLoader":
            node.update(class_type=graph.CLIP_VISION_NODE, inputs={})
        elif kind == "CLIPTextEncode":
            node.update(class_type=graph.CONDITIONING_NODE,
                        inputs={"kind": "sd15", "seed": int(node_id), "tokens": 77, "width": 512, "height": 512})
        elif kind == "LoadImage":
            width, height = image_sizes[inputs["image"]]
            node.update(class_type=graph.IMAGE_NODE,
                        inputs={"seed": int(node_id), "width": width, "height": height, "batch": 1})
        elif kind == "EmptyLatentImage":
            inputs.update(width=inputs["width"] // PIXEL_DIVISOR, height=inputs["height"] // PIXEL_DIVISOR)
        elif kind == "KSampler":
            inputs["steps"] = STEPS
    return prompt


def _prompt(path: Path) -> dict:
    return ui_to_api(json.loads(path.read_text()))


def _node(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


@pytest.fixture
def windows_seen(host_pack, monkeypatch) -> set:
    seen: set = set()
    plan_cls = host_pack.module.ip_adapter.run_plan.RunPlan
    original = plan_cls.frames

    def recording_frames(self, extra, layout):
        frames = original(self, extra, layout)
        if extra.get("context_window") is not None:
            seen.add(frames)
        return frames

    monkeypatch.setattr(plan_cls, "frames", recording_frames)
    return seen


@pytest.mark.usefixtures("host_context_window_step_fix")
def test_crossfade_with_context_windows_runs(comfy_host, host_graph, standins, windows_seen) -> None:
    prompt = _on_standins(_prompt(CROSSFADE), standins, {"reference_a.png": (64, 64), "reference_b.png": (64, 48)})
    result = host_graph.run(prompt)
    (weights_id,) = _node(prompt, "FrameWeights")
    weights, inverted, total = (result.output(weights_id, slot) for slot in range(3))
    assert total == 32 and weights[0] == 1.0 and weights[-1] == 0.0
    assert all(abs(a + b - 1.0) <= 1e-12 for a, b in zip(weights, inverted))
    (window_id,) = _node(prompt, "ContextWindowsManual")
    patches = result.output(window_id).model_options["transformer_options"]["patches_replace"]["attn2"]
    for patch in patches.values():  # the two Batch applies, stacked: weights and 1 - weights per frame
        first, second = (c.entry for c in patch.contributions)
        assert first.frame_weights == tuple(weights) and second.frame_weights == tuple(inverted)
    assert windows_seen == {tuple(range(0, 16)), tuple(range(12, 28)), tuple(range(16, 32))}
    (decode_id,) = _node(prompt, "VAEDecode")
    frames = result.output(decode_id)
    assert frames.shape == (32, 64, 64, 3) and torch.isfinite(frames).all()


def test_tiled_wide_reference_runs(host_graph, standins) -> None:
    prompt = _on_standins(_prompt(TILED), standins, {"wide_reference.png": (192, 64)})
    result = host_graph.run(prompt)
    (tiled_id,) = _node(prompt, "ApplyIPAdapterTiled")
    tiles, masks = result.output(tiled_id, 1), result.output(tiled_id, 2)
    assert tiles.shape == (3, 64, 64, 3)
    assert masks.shape[0] == 3 and torch.allclose(masks.sum(dim=0), torch.ones(masks.shape[1:]), atol=1e-6)
    (decode_id,) = _node(prompt, "VAEDecode")
    image = result.output(decode_id)
    assert image.shape == (1, 64, 192, 3) and torch.isfinite(image).all()
    assert len(result.ui) == 3  # the saved image and the two previews
