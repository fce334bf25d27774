"""The FLUX.1 and SD3.5 example workflows (workflows/*.json, UI format) run by the host's own executor on tiny
stand-ins: validate_prompt, then PromptExecutor, through LoadImage, Load IP-Adapter, Encode Image Prompt, Apply
IP-Adapter, FluxGuidance, KSampler, the VAE (a tiny 16-channel TAESD, as ae.safetensors / inside the SD3.5
checkpoint) and SaveImage.

Only what the host cannot load at tiny size is swapped for harness nodes: the FLUX.1 UNETLoader (the host's Flux
detection assumes full width), the text encoders (CLIPTextEncode -> seeded conditioning) and CLIPVisionLoader (its
configs are chosen by encoder depth). The SD3.5 checkpoint loads through CheckpointLoaderSimple itself. Each run is
checked against the same graph with the adapter's weight at 0 and without the adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.host import graph
from tests.host.dit_setup import *  # noqa: F403  (fixtures)
from tests.host.dit_setup import conds
from tests.host.tiny_dit import tiny_taesd16_state_dict
from tests.host.workflow_runner import ui_to_api

WORKFLOWS = Path(__file__).parents[2] / "workflows"
FILES = {"flux": "ip_adapter_flux_xlabs.json", "sd35": "ip_adapter_sd35_large_instantx.json"}
MODEL_NODE, VISION_NODE, TEXT_NODE = "IPAHarnessDiTModel", "IPAHarnessDiTVision", "IPAHarnessDiTConditioning"
TEXT_LOADERS = {"DualCLIPLoader", "TripleCLIPLoader"}
STEPS, PIXELS = 2, 64
EXACT, MIN_EFFECT = 1e-6, 1e-3
_PROVIDERS: dict = {}


class HarnessDiTModel:
    CATEGORY, FUNCTION, RETURN_TYPES = "ip_adapter_harness", "load", ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"kind": (["flux", "sd35"],)}}

    def load(self, kind: str) -> tuple:
        return (_PROVIDERS[("model", kind)],)


class HarnessDiTVision:
    CATEGORY, FUNCTION, RETURN_TYPES = "ip_adapter_harness", "load", ("CLIP_VISION",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"kind": (["flux", "sd35"],)}}

    def load(self, kind: str) -> tuple:
        return (_PROVIDERS[("vision", kind)],)


class HarnessDiTConditioning:
    CATEGORY, FUNCTION, RETURN_TYPES = "ip_adapter_harness", "make", ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"kind": (["flux", "sd35"],), "seed": ("INT", {"default": 0, "min": 0})}}

    def make(self, kind: str, seed: int) -> tuple:
        return (conds(kind, seed).comfy(),)


def _by_type(prompt: dict, class_type: str) -> list[str]:
    return [k for k, n in prompt.items() if n["class_type"] == class_type]


def tiny_prompt(kind: str, weight: float | None = None, adapter: bool = True) -> dict:
    """The workflow with the harness stand-ins, 2 steps at 64 px; optionally another weight or no adapter at all."""
    prompt = ui_to_api(json.loads((WORKFLOWS / FILES[kind]).read_text()))
    for node_id in _by_type(prompt, "UNETLoader"):
        prompt[node_id] = {"class_type": MODEL_NODE, "inputs": {"kind": kind}}
    for node_id in _by_type(prompt, "CLIPVisionLoader"):
        prompt[node_id] = {"class_type": VISION_NODE, "inputs": {"kind": kind}}
    for seed, node_id in enumerate(_by_type(prompt, "CLIPTextEncode")):
        prompt[node_id] = {"class_type": TEXT_NODE, "inputs": {"kind": kind, "seed": 10 + seed}}
    for class_type in TEXT_LOADERS:
        for node_id in _by_type(prompt, class_type):
            del prompt[node_id]
    (sampler,) = _by_type(prompt, "KSampler")
    prompt[sampler]["inputs"]["steps"] = STEPS
    for node_id in _by_type(prompt, "EmptySD3LatentImage"):
        prompt[node_id]["inputs"].update(width=PIXELS, height=PIXELS)
    (apply,) = _by_type(prompt, "ApplyIPAdapter")
    if weight is not None:
        prompt[apply]["inputs"]["weight"] = weight
    if not adapter:
        prompt[sampler]["inputs"]["model"] = prompt[apply]["inputs"]["model"]
    return prompt


@pytest.fixture(scope="module")
def runner(comfy_host, host_models, flux, mmdit, tiny_clip_vision, siglip, dit_files) -> Iterator[graph.GraphRunner]:
    import folder_paths

    import nodes

    _PROVIDERS.update({("model", "flux"): flux.patcher, ("vision", "flux"): tiny_clip_vision.host,
                       ("vision", "sd35"): siglip.host})
    nodes.NODE_CLASS_MAPPINGS.update({MODEL_NODE: HarnessDiTModel, VISION_NODE: HarnessDiTVision,
                                      TEXT_NODE: HarnessDiTConditioning})
    taesd = tiny_taesd16_state_dict()
    host_models.write("vae", "ae.safetensors", taesd)
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in mmdit.host_state_dict().items()}
    checkpoint.update({f"first_stage_model.{k}": v for k, v in taesd.items()})
    host_models.write("checkpoints", "sd3.5_large.safetensors", checkpoint)
    image = torch.rand(PIXELS, PIXELS, 3, generator=torch.Generator().manual_seed(0))
    Image.fromarray((image * 255).byte().numpy()).save(Path(folder_paths.get_input_directory()) / "example.png")
    yield graph.GraphRunner()
    _PROVIDERS.clear()  # host models must not outlive the session (their __del__ needs the host's modules)


def _latent(runner: graph.GraphRunner, prompt: dict) -> tuple[torch.Tensor, graph.GraphResult]:
    result = runner.run(prompt)
    (sampler,) = _by_type(prompt, "KSampler")
    return result.output(sampler)["samples"], result


@pytest.mark.parametrize("kind", ["flux", "sd35"])
def test_example_workflow_runs_in_the_host_executor(kind, runner) -> None:
    latent, result = _latent(runner, tiny_prompt(kind))
    (save,) = _by_type(tiny_prompt(kind), "SaveImage")
    images = result.ui[save]["images"]
    assert len(images) == 1 and images[0]["filename"].endswith(".png")
    off, _ = _latent(runner, tiny_prompt(kind, weight=0.0))
    without, _ = _latent(runner, tiny_prompt(kind, adapter=False))
    assert (off - without).abs().max() <= EXACT
    assert (latent - without).abs().max() > MIN_EFFECT


def _with_skip_layer_guidance(prompt: dict, scale: float) -> dict:
    """The Skip Layer Guidance node (nodes_slg.py) between Apply IP-Adapter and the KSampler, on double block 1."""
    (sampler,) = _by_type(prompt, "KSampler")
    prompt["slg"] = {"class_type": "SkipLayerGuidanceDiT",
                     "inputs": {"model": prompt[sampler]["inputs"]["model"], "double_layers": "1", "single_layers": "",
                                "scale": scale, "start_percent": 0.0, "end_percent": 1.0, "rescaling_scale": 0.0}}
    prompt[sampler]["inputs"]["model"] = ["slg", 0]
    return prompt


def test_skip_layer_guidance_node_on_top_of_the_adapter(runner) -> None:
    """SLG writes its skip at our dit keys during its extra pass; at scale 0 the graph equals the adapter alone, at
    scale 3 it changes the result (and sampling runs through both patches)."""
    with_adapter, _ = _latent(runner, tiny_prompt("sd35"))
    idle, _ = _latent(runner, _with_skip_layer_guidance(tiny_prompt("sd35"), 0.0))
    active, _ = _latent(runner, _with_skip_layer_guidance(tiny_prompt("sd35"), 3.0))
    assert (idle - with_adapter).abs().max() <= EXACT
    assert (active - with_adapter).abs().max() > MIN_EFFECT
