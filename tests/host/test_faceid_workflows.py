"""The FaceID example workflows run: each UI-format file is converted to an API prompt the way the frontend does it
and executed by the host's own executor, with tiny stand-ins for what cannot be shipped (checkpoint, text encoder,
CLIP vision, InsightFace pack, adapter weights under their official names, a face photo), fewer steps and a small
latent. Every other widget value comes from the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.faceid_standins import Face, face_photo, require_faceid
from tests.host import graph
from tests.host.faceid_setup import faceid_groups, standin_pack
from tests.host.workflow_runner import ui_to_api

require_faceid()

pytestmark = pytest.mark.filterwarnings("ignore:.*estimate.*:FutureWarning")

WORKFLOWS = Path(__file__).parents[2] / "workflows"
FACEID, PLUSV2 = "ip_adapter_faceid_sd15.json", "ip_adapter_faceid_plusv2_sd15.json"
KIND = {FACEID: "faceid", PLUSV2: "faceid-plusv2"}
PIXELS, STEPS = 64, 2
MIN_EFFECT = 1e-2


def _ids(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def with_stand_ins(prompt: dict, checkpoint: str, pack: str) -> dict:
    """Swap what cannot run here for tiny stand-ins; adapter file names and every other widget stay as shipped."""
    for node_id in _ids(prompt, "CheckpointLoaderSimple"):
        prompt[node_id]["inputs"]["ckpt_name"] = checkpoint
    for seed, node_id in enumerate(_ids(prompt, "CLIPTextEncode")):  # the tiny checkpoint has no text encoder
        prompt[node_id] = {"class_type": graph.CONDITIONING_NODE,
                           "inputs": dict(kind="sd15", seed=seed, tokens=77, width=PIXELS, height=PIXELS)}
    for node_id in _ids(prompt, "CLIPVisionLoader"):  # CLIPVisionLoader accepts only full-size encoders
        prompt[node_id] = {"class_type": graph.CLIP_VISION_NODE, "inputs": {}}
    for node_id in _ids(prompt, "LoadInsightFace"):
        prompt[node_id]["inputs"]["model_name"] = pack
    for node_id in _ids(prompt, "EmptyLatentImage"):
        prompt[node_id]["inputs"].update(width=PIXELS, height=PIXELS)
    for node_id in _ids(prompt, "KSampler"):
        prompt[node_id]["inputs"]["steps"] = STEPS
    return prompt


@pytest.fixture(scope="module")
def prepared(host_models, host_pack, tiny_sd15, tiny_clip_vision, comfy_host):
    """Files the workflows name: the adapters (official names), the face photo; plus the tiny checkpoint and pack."""
    import folder_paths

    for name, kind in KIND.items():
        adapter = next(n["widgets_values"][0] for n in json.loads((WORKFLOWS / name).read_text())["nodes"]
                       if n["type"] == "LoadIPAdapter")
        groups = faceid_groups(kind, tiny_sd15, tiny_clip_vision, seed=7, depth=1)  # no diffusers comparison here
        host_models.write("ipadapter", adapter, groups)
    photo = face_photo(Face(7, 9, person=4))[0]
    image = Image.fromarray((photo * 255).round().to(torch.uint8).numpy())
    image.save(Path(folder_paths.get_input_directory()) / "face.png")
    return host_models.checkpoint("sd15"), standin_pack(host_models)


def _run(runner: graph.GraphRunner, name: str, prepared, edit=None) -> tuple[dict, graph.GraphResult]:
    prompt = with_stand_ins(ui_to_api(json.loads((WORKFLOWS / name).read_text())), *prepared)
    if edit is not None:
        edit(prompt)
    return prompt, runner.run(prompt)


@pytest.fixture(scope="module")
def runner(comfy_host, tiny_clip_vision) -> graph.GraphRunner:
    """One executor for both workflows, as in the UI: the unchanged loaders stay cached between the runs."""
    graph.register_harness_nodes(lambda: tiny_clip_vision.host)
    return graph.GraphRunner()


@pytest.mark.parametrize("name", [FACEID, PLUSV2])
def test_faceid_workflow_runs_in_the_host(name, prepared, runner, comfy_host) -> None:
    prompt, result = _run(runner, name, prepared)
    apply_id = _ids(prompt, "ApplyIPAdapterFaceID")[0]
    model = result.output(apply_id)
    assert len(model.model_options["transformer_options"]["patches_replace"]["attn2"]) == 16
    assert len(model.patches) == 4 * 32  # the checkpoint's LoRA on every attention module (lora_strength 0.6)
    crops = result.output(_ids(prompt, "EncodeFacePrompt")[0], 1)
    assert crops.shape == (1, 224, 224, 3)
    face_prompt = result.output(_ids(prompt, "EncodeFacePrompt")[0])
    assert (face_prompt.positive.hidden_states is not None) == (name == PLUSV2)
    saved = result.ui[_ids(prompt, "SaveImage")[0]]["images"]
    assert len(saved) == 1 and (comfy_host.scratch / "output" / saved[0]["subfolder"] / saved[0]["filename"]).is_file()
    samples = result.output(_ids(prompt, "KSampler")[0])["samples"]
    assert samples.shape == (1, 4, PIXELS // 8, PIXELS // 8) and torch.isfinite(samples).all()
    if name == FACEID:  # the same graph with the face switched off (weight and LoRA 0) samples something else
        def off(p: dict) -> None:
            p[apply_id]["inputs"].update(weight=0.0, lora_strength=0.0)

        _, without = _run(runner, name, prepared, off)
        other = without.output(_ids(prompt, "KSampler")[0])["samples"]
        assert (samples - other).abs().max() > MIN_EFFECT
