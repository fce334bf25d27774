"""Full API-format graphs through the host's own validate_prompt and PromptExecutor.

CheckpointLoaderSimple -> LoraLoader -> Apply IP-Adapter (base, linear) -> Apply IP-Adapter (plus, style transfer)
-> KSampler (cfg > 1, so cond and uncond share a batch) with conditioning from ControlNetApplyAdvanced (a tiny
ControlNet through the host's ControlNetLoader) -> VAEDecode -> SaveImage. The tiny checkpoint has no text encoder,
so conditioning comes from the harness node and the checkpoint's CLIP output (None) goes through LoraLoader.

Every effect is measured against the same graph with one part switched off: both adapters at weight 0 must equal the
graph without Apply nodes, and the adapters and the ControlNet must each change the latent and the decoded image.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.contract import FRONTEND_ONLY
from tests.host import graph
from tests.host.ipa_setup import adapter_groups, write_adapter
from tests.host.tiny_controlnet import PREFIX, controlnet_keys, controlnet_state_dict
from tests.host.tiny_models import SD15, SDXL, TinyUNet

PIXELS = 64  # 8x8 latent
LATENT_SIDE = PIXELS // 8
STEPS = 2
CFG = 5.0
SAMPLER_SEED = 7
EXACT = 1e-6
#: The smallest change in the latent / the decoded image (0..1) that counts as an effect.
MIN_LATENT_EFFECT = 1e-2
MIN_IMAGE_EFFECT = 1e-3
#: Entries of a key patched by both adapters (the second one, style transfer, patches only some layers).
STACKED = 2
#: img2img / inpainting: how much of the schedule re-noises the encoded image.
PARTIAL_DENOISE = 0.6
WORKFLOWS = sorted((Path(__file__).parents[2] / "workflows").glob("*.json"))
#: Widget value types of INPUT_TYPES entries (anything else is a socket).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
#: The folder each model-file widget of the example workflows lists (widget name -> folder).
MODEL_WIDGET_FOLDERS = {"ckpt_name": "checkpoints", "clip_name": "clip_vision", "ipadapter_file": "ipadapter",
                        "unet_name": "diffusion_models", "vae_name": "vae", "clip_name1": "text_encoders",
                        "clip_name2": "text_encoders", "clip_name3": "text_encoders"}
#: Model-folder widgets that name a folder of files: (folder, sub-path) -> a placeholder file inside it.
PACK_WIDGETS = {("LoadInsightFace", "model_name"): ("insightface", "models", "placeholder.onnx")}


@dataclass(frozen=True)
class GraphFiles:
    """File names, as the loader widgets expect them, of the models the graphs load."""

    checkpoint: str
    lora: str
    controlnet: str
    base_adapter: str
    plus_adapter: str
    sdxl_adapter: str


@dataclass(frozen=True)
class Switches:
    """What the graph contains: the two adapter weights (None drops the Apply nodes) and the ControlNet strength."""

    weights: tuple[float, float] | None = (1.0, 1.0)
    control_strength: float = 1.0
    source: str = "txt2img"  # or "img2img" (VAEEncode, denoise < 1) or "inpaint" (plus a left-half noise mask)


@dataclass(frozen=True)
class Outcome:
    """What one run of the full graph produced: the sampled latent, the decoded image, the saved PNG (0..255)."""

    latent: torch.Tensor
    image: torch.Tensor
    png: np.ndarray


@pytest.fixture(scope="module")
def controlnet_sd(tiny_sd15: TinyUNet) -> dict[str, torch.Tensor]:
    return controlnet_state_dict(tiny_sd15, seed=3)


@pytest.fixture(scope="module")
def files(host_models, host_pack, tiny_sd15, tiny_sdxl, tiny_clip_vision, controlnet_sd) -> GraphFiles:
    def adapter(kind: str, unet: TinyUNet, seed: int) -> str:
        groups = adapter_groups(kind, unet, tiny_clip_vision, seed=seed)
        return write_adapter(host_models, groups, f"graph-{kind}-{seed}_{unet.kind}.safetensors")

    return GraphFiles(
        checkpoint=host_models.checkpoint(SD15),
        lora=host_models.lora(SD15),
        controlnet=host_models.write("controlnet", "tiny_controlnet_sd15.safetensors", controlnet_sd),
        base_adapter=adapter("base", tiny_sd15, seed=1),
        plus_adapter=adapter("plus", tiny_sd15, seed=2),
        sdxl_adapter=adapter("base", tiny_sdxl, seed=1),
    )


@pytest.fixture(scope="module")
def runner(comfy_host, tiny_clip_vision) -> graph.GraphRunner:
    """One executor for the module's graphs (what host_graph gives per test), so unchanged loaders stay cached
    between the variants, as they do in the UI."""
    graph.register_harness_nodes(lambda: tiny_clip_vision.host)
    return graph.GraphRunner()


@pytest.fixture(scope="module")
def run_full(runner, files, comfy_host) -> Callable[[Switches], Outcome]:
    """Runs the full graph with some parts switched off; each variant runs once per module."""
    done: dict[Switches, Outcome] = {}

    def run(switches: Switches) -> Outcome:
        if switches not in done:
            done[switches] = _outcome(runner.run(full_graph(files, switches)), comfy_host.scratch / "output")
        return done[switches]

    return run


def _node(class_type: str, **inputs: object) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _adapter_nodes(files: GraphFiles, weights: tuple[float, float], first_adapter: str) -> dict:
    """Two stacked Apply IP-Adapter nodes on the LoRA'd model; the model comes out of "ipa2"."""
    apply = dict(combine_images="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only")
    return {
        "cv": _node(graph.CLIP_VISION_NODE),
        "ref": _node(graph.IMAGE_NODE, seed=11, width=96, height=80, batch=1),
        "prompt": _node("EncodeImagePrompt", clip_vision=["cv", 0], image=["ref", 0], crop="center"),
        "ipa1_load": _node("LoadIPAdapter", ipadapter_file=first_adapter),
        "ipa1": _node("ApplyIPAdapter", model=["lora", 0], ipadapter=["ipa1_load", 0], image_prompt=["prompt", 0],
                      weight=weights[0], weight_type="linear", **apply),
        "ipa2_load": _node("LoadIPAdapter", ipadapter_file=files.plus_adapter),
        "ipa2": _node("ApplyIPAdapter", model=["ipa1", 0], ipadapter=["ipa2_load", 0], image_prompt=["prompt", 0],
                      weight=weights[1], weight_type="style transfer", **apply),
    }


def _latent_nodes(source: str) -> tuple[dict, str, float]:
    """The nodes that make the sampler's input latent, the id of the last one, and the denoise to use."""
    if source == "txt2img":
        return {"latent": _node("EmptyLatentImage", width=PIXELS, height=PIXELS, batch_size=1)}, "latent", 1.0
    made = {"init": _node(graph.IMAGE_NODE, seed=21, width=PIXELS, height=PIXELS, batch=1),
            "enc": _node("VAEEncode", pixels=["init", 0], vae=["ckpt", 2])}
    if source == "img2img":
        return made, "enc", PARTIAL_DENOISE
    made.update({
        "canvas": _node("SolidMask", value=0.0, width=PIXELS, height=PIXELS),
        "half": _node("SolidMask", value=1.0, width=PIXELS // 2, height=PIXELS),
        "mask": _node("MaskComposite", destination=["canvas", 0], source=["half", 0], x=0, y=0, operation="add"),
        "inpaint": _node("SetLatentNoiseMask", samples=["enc", 0], mask=["mask", 0]),
    })
    return made, "inpaint", PARTIAL_DENOISE


def full_graph(files: GraphFiles, switches: Switches = Switches(), first_adapter: str | None = None) -> dict:
    """The whole graph in API format; `first_adapter` replaces the base adapter of "ipa1"."""
    cond = dict(kind=SD15, tokens=77, width=PIXELS, height=PIXELS)
    latent_nodes, latent, denoise = _latent_nodes(switches.source)
    prompt = {
        **latent_nodes,
        "ckpt": _node("CheckpointLoaderSimple", ckpt_name=files.checkpoint),
        "lora": _node("LoraLoader", model=["ckpt", 0], clip=["ckpt", 1], lora_name=files.lora, strength_model=1.0,
                      strength_clip=0.0),
        "pos": _node(graph.CONDITIONING_NODE, seed=1, **cond),
        "neg": _node(graph.CONDITIONING_NODE, seed=2, **cond),
        "cn_load": _node("ControlNetLoader", control_net_name=files.controlnet),
        "hint": _node(graph.IMAGE_NODE, seed=5, width=PIXELS, height=PIXELS, batch=1),
        "cn": _node("ControlNetApplyAdvanced", positive=["pos", 0], negative=["neg", 0], control_net=["cn_load", 0],
                    image=["hint", 0], strength=switches.control_strength, start_percent=0.0, end_percent=1.0),
        "sample": _node("KSampler", model=["lora", 0], seed=SAMPLER_SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                        scheduler="normal", positive=["cn", 0], negative=["cn", 1], latent_image=[latent, 0],
                        denoise=denoise),
        "decode": _node("VAEDecode", samples=["sample", 0], vae=["ckpt", 2]),
        "save": _node("SaveImage", images=["decode", 0], filename_prefix="ipa_graph"),
    }
    if switches.weights is not None:
        prompt.update(_adapter_nodes(files, switches.weights, first_adapter or files.base_adapter))
        prompt["sample"]["inputs"]["model"] = ["ipa2", 0]
    return prompt


def _saved_png(result: graph.GraphResult, output_dir: Path) -> np.ndarray:
    saved = result.ui["save"]["images"]
    assert len(saved) == 1
    path = output_dir / saved[0]["subfolder"] / saved[0]["filename"]
    assert path.is_file() and path.suffix == ".png"
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (PIXELS, PIXELS)
        return np.asarray(png.convert("RGB"), dtype=np.int16)


def _outcome(result: graph.GraphResult, output_dir: Path) -> Outcome:
    return Outcome(latent=result.output("sample")["samples"].clone(), image=result.output("decode").clone(),
                   png=_saved_png(result, output_dir))


def _differ(a: Outcome, b: Outcome) -> dict[str, float]:
    return {"latent": float((a.latent - b.latent).abs().max()), "image": float((a.image - b.image).abs().max()),
            "png": float(np.abs(a.png - b.png).max())}


def _attn2(model) -> dict:
    return model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


# The tiny ControlNet.

@pytest.mark.parametrize("kind", [SD15, SDXL])
def test_tiny_controlnet_loads_completely_in_the_host(kind: str, comfy_host, request: pytest.FixtureRequest) -> None:
    import comfy.controlnet

    unet = request.getfixturevalue(f"tiny_{kind}")
    state_dict = request.getfixturevalue("controlnet_sd") if kind == SD15 else controlnet_state_dict(unet, seed=3)
    residual_convs = [v for k, v in state_dict.items() if ".zero_convs." in k or ".middle_block_out." in k]
    assert residual_convs and all(v.abs().max() > 0 for v in residual_convs)
    control = comfy.controlnet.load_controlnet_state_dict(dict(state_dict))
    assert type(control) is comfy.controlnet.ControlNet
    loaded = control.control_model.state_dict()
    assert set(loaded) == controlnet_keys(state_dict)
    assert all(torch.equal(loaded[k], state_dict[PREFIX + k].to(loaded[k].dtype)) for k in loaded)


# The full graph.

def test_full_graph_runs_and_saves_a_png(runner, files, comfy_host) -> None:
    import comfy.controlnet

    result = runner.run(full_graph(files))
    assert result.success
    assert result.output("ckpt", 1) is None and result.output("lora", 1) is None  # no text encoder in the file
    assert len(result.output("lora").patches) == 16  # the LoRA's attn2.to_k patches
    assert isinstance(result.output("cn_load"), comfy.controlnet.ControlNet)
    first, both = _attn2(result.output("ipa1")), _attn2(result.output("ipa2"))
    assert len(first) == 16 and all(len(p.entries) == 1 for p in first.values())
    stacked = {key for key, patch in both.items() if len(patch.entries) == STACKED}
    assert set(both) == set(first) and 0 < len(stacked) < len(both)  # style transfer stacks on some layers only
    assert all(len(both[key].entries) == 1 for key in set(both) - stacked)
    samples = result.output("sample")["samples"]
    assert samples.shape == (1, 4, LATENT_SIDE, LATENT_SIDE) and torch.isfinite(samples).all()
    assert result.output("decode").shape == (1, PIXELS, PIXELS, 3)
    _saved_png(result, comfy_host.scratch / "output")


def test_adapters_change_the_result_and_weight_zero_is_a_no_op(run_full) -> None:
    on, zero, without = (run_full(Switches(weights=w)) for w in ((1.0, 1.0), (0.0, 0.0), None))
    assert _differ(zero, without)["latent"] <= EXACT
    effect = _differ(on, zero)
    assert effect["latent"] > MIN_LATENT_EFFECT and effect["image"] > MIN_IMAGE_EFFECT and effect["png"] > 0, effect


@pytest.mark.parametrize("source", ["img2img", "inpaint"])
def test_img2img_and_inpainting_graphs(run_full, runner, files, source) -> None:
    on, zero, without = (run_full(Switches(weights=w, source=source)) for w in ((1.0, 1.0), (0.0, 0.0), None))
    assert _differ(zero, without)["latent"] <= EXACT
    assert _differ(on, zero)["latent"] > MIN_LATENT_EFFECT
    if source == "inpaint":  # outside the mask the sampler keeps the encoded image, adapter or not
        encoded = runner.run(full_graph(files, Switches(source=source))).output("enc")["samples"]
        right = (..., slice(LATENT_SIDE // 2, None))
        assert (on.latent[right] - encoded[right]).abs().max() <= EXACT
        assert (on.latent - encoded).abs().max() > MIN_LATENT_EFFECT


def test_controlnet_changes_the_result(run_full) -> None:
    effect = _differ(run_full(Switches(control_strength=1.0)), run_full(Switches(control_strength=0.0)))
    assert effect["latent"] > MIN_LATENT_EFFECT and effect["image"] > MIN_IMAGE_EFFECT and effect["png"] > 0, effect


def test_sdxl_adapter_on_sd15_checkpoint_fails_in_the_executor(runner, files) -> None:
    result = runner.run(full_graph(files, first_adapter=files.sdxl_adapter), check=False)
    assert not result.success
    error = result.error()
    assert error is not None and error["node_id"] == "ipa1" and error["node_type"] == "ApplyIPAdapter"
    assert error["exception_type"].endswith("IncompatibleModelError")
    message = error["exception_message"]
    assert "SDXL" in message and "SD1.5" in message and files.sdxl_adapter in message


# The example workflows in the host.

def _widget_spec(spec: tuple) -> tuple[bool, dict]:
    """(is a widget, options) of one INPUT_TYPES entry."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    is_widget = isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES
    return is_widget and not options.get("forceInput", False), options


def ui_to_api(workflow: dict) -> dict:
    """A v0.4 UI workflow in API format, as the frontend's graphToPrompt builds it: linked inputs become
    [source id, slot], widget values are taken in INPUT_TYPES order (a control_after_generate widget and an
    image_upload widget carry one extra UI-only value); muted and bypassed nodes are left out.

    Raises:
        AssertionError: a node type the host does not know, or widget values that do not match its inputs.
    """
    import nodes

    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in FRONTEND_ONLY:
            continue
        cls = nodes.NODE_CLASS_MAPPINGS.get(node["type"])
        assert cls is not None, f"{node['type']} is not a node type of the host (with the pack loaded)"
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        types = cls.INPUT_TYPES()
        inputs: dict[str, object] = {}
        for name, spec in {**types.get("required", {}), **types.get("optional", {})}.items():
            is_widget, options = _widget_spec(spec)
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
                if is_widget:  # a widget converted to an input keeps its slot
                    values.pop(0)
            elif is_widget:
                assert values, f"{node['type']} #{node['id']}: no widget value for {name}"
                inputs[name] = values.pop(0)
                if options.get("control_after_generate") or options.get("image_upload"):
                    values.pop(0)
        assert not values, f"{node['type']} #{node['id']}: {len(values)} widget values left over: {values}"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


@pytest.fixture
def workflow_files(host_models, comfy_host):
    """Creates empty stand-ins for the model and image files an API prompt names (validation checks only that they
    are listed); removes them afterwards so no other test lists them."""
    import folder_paths

    made: list[Path] = []

    def make(prompt: dict) -> None:
        for node in prompt.values():
            for name, value in node["inputs"].items():
                if name in MODEL_WIDGET_FOLDERS and isinstance(value, str):
                    path = host_models.folder(MODEL_WIDGET_FOLDERS[name]) / value
                elif (node["class_type"], name) in PACK_WIDGETS:
                    folder, sub, placeholder = PACK_WIDGETS[(node["class_type"], name)]
                    path = host_models.folder(folder) / sub / value / placeholder
                    path.parent.mkdir(parents=True, exist_ok=True)
                elif node["class_type"] == "LoadImage" and name == "image":
                    path = Path(folder_paths.get_input_directory()) / value
                else:
                    continue
                if not path.exists():
                    if path.suffix == ".png":
                        Image.new("RGB", (8, 8)).save(path)
                    else:
                        path.write_bytes(b"")
                    made.append(path)
        folder_paths.filename_list_cache.clear()

    yield make
    for path in made:
        path.unlink(missing_ok=True)
    folder_paths.filename_list_cache.clear()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_example_workflow_validates_in_the_host(path: Path, host_pack, workflow_files) -> None:
    import execution

    import nodes

    workflow = json.loads(path.read_text())
    used = {n["type"] for n in workflow["nodes"]} - FRONTEND_ONLY
    assert used <= set(nodes.NODE_CLASS_MAPPINGS), used - set(nodes.NODE_CLASS_MAPPINGS)
    assert used & set(host_pack.node_class_mappings)  # every example uses the pack
    prompt = ui_to_api(workflow)
    workflow_files(prompt)
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    assert valid, (error, node_errors)
    assert sorted(outputs) == sorted(str(n["id"]) for n in workflow["nodes"] if n["type"] in ("SaveImage",
                                                                                               "PreviewImage"))
