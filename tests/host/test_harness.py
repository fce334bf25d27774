"""The host harness itself: discovery, model detection, attn2 keys, prediction parity, CLIP vision, pack loading
and graph execution. Each check compares against values written out here (comfy-host.md §4, §9, §17)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.host import comfy_env, graph
from tests.host.predict import Attn2Recorder, host_eps, random_text_cond, twin_eps
from tests.host.tiny_models import SD15, SDXL
from tests.numerics import assert_relative_close

SIGMA = 2.5

SD15_KEYS = ([("input", n, 0) for n in (1, 2, 4, 5, 7, 8)] + [("middle", 0, 0)]
             + [("output", n, 0) for n in range(3, 12)])
SDXL_KEYS = ([("input", n, j) for n in (4, 5) for j in range(2)] + [("input", n, j) for n in (7, 8) for j in range(10)]
             + [("middle", 0, j) for j in range(10)] + [("output", n, j) for n in (0, 1, 2) for j in range(10)]
             + [("output", n, j) for n in (3, 4, 5) for j in range(2)])


def _latent(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed)) * SIGMA


# Discovery (no host needed).

def _fake_checkout(path: Path) -> Path:
    (path / "comfy").mkdir(parents=True)
    (path / "main.py").write_text("")
    (path / "folder_paths.py").write_text("")
    return path


def test_locate_uses_env_var(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path / "ComfyUI")
    found = comfy_env.locate_comfyui(tmp_path / "elsewhere" / "pack", {comfy_env.ENV_VAR: str(root)})
    assert found.path == root.resolve() and found.problem is None


def test_locate_rejects_a_wrong_env_var(tmp_path: Path) -> None:
    found = comfy_env.locate_comfyui(tmp_path / "pack", {comfy_env.ENV_VAR: str(tmp_path)})
    assert found.path is None and "not a ComfyUI checkout" in found.problem


def test_locate_walks_up_from_custom_nodes(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path / "ComfyUI")
    pack = root / "custom_nodes" / "ip-adapter-nodes"
    pack.mkdir(parents=True)
    assert comfy_env.locate_comfyui(pack, {}).path == root.resolve()


def test_locate_without_checkout_explains_how_to_point(tmp_path: Path) -> None:
    found = comfy_env.locate_comfyui(tmp_path / "pack", {})
    assert found.path is None and found.problem is None and comfy_env.ENV_VAR in found.skip_reason


# Host start and pack loading.

def test_host_started_on_cpu(comfy_host: comfy_env.HostInfo) -> None:
    import comfy.cli_args
    import comfy.model_management

    import nodes

    assert comfy.cli_args.args.cpu
    assert comfy.model_management.get_torch_device().type == "cpu"
    assert Path(nodes.__file__).resolve() == comfy_host.root / "nodes.py"
    assert "KSampler" in nodes.NODE_CLASS_MAPPINGS and "LoraLoaderModelOnly" in nodes.NODE_CLASS_MAPPINGS


def test_model_folders_point_at_scratch(comfy_host: comfy_env.HostInfo) -> None:
    import folder_paths

    for name in ("checkpoints", "diffusion_models", "loras", "clip_vision", "vae", "controlnet"):
        paths = folder_paths.get_folder_paths(name)
        assert paths and all(Path(p).is_relative_to(comfy_host.models_dir) for p in paths), (name, paths)
    assert Path(folder_paths.get_output_directory()).is_relative_to(comfy_host.scratch)


def test_pack_loads_through_load_custom_node(host_pack: comfy_env.LoadedPack) -> None:
    import nodes

    assert sys.modules[host_pack.module_name] is host_pack.module
    assert Path(host_pack.module.__file__).resolve() == comfy_env.PACK_DIR / "__init__.py"
    assert nodes.LOADED_MODULE_DIRS[host_pack.folder_name] == str(comfy_env.PACK_DIR)
    assert host_pack.registered == host_pack.node_class_mappings
    for node_cls in host_pack.registered.values():
        assert node_cls.RELATIVE_PYTHON_MODULE == f"custom_nodes.{host_pack.folder_name}"
    pack_nodes = sys.modules.get(f"{host_pack.module_name}.nodes")
    assert pack_nodes is not None and pack_nodes is not nodes


# Tiny UNets: detection and block keys.

@pytest.mark.parametrize(("kind", "model_class"), [(SD15, "BaseModel"), (SDXL, "SDXL")])
def test_host_detects_tiny_unet(kind: str, model_class: str, comfy_host, request: pytest.FixtureRequest) -> None:
    import comfy.model_base
    import comfy.model_detection

    tiny = request.getfixturevalue(f"tiny_{kind}")
    assert type(tiny.patcher.model) is getattr(comfy.model_base, model_class)
    assert tiny.patcher.model_dtype() == torch.float32
    detected = comfy.model_detection.detect_unet_config(tiny.ldm_state_dict(), "")
    assert {k: detected[k] for k in tiny.layout} == tiny.layout
    assert detected["model_channels"] == 320 and detected["context_dim"] == tiny.context_dim


@pytest.mark.parametrize(("kind", "expected"), [(SD15, SD15_KEYS), (SDXL, SDXL_KEYS)])
def test_attn2_replace_keys(kind: str, expected: list, comfy_host, request: pytest.FixtureRequest) -> None:
    tiny = request.getfixturevalue(f"tiny_{kind}")
    recorder = Attn2Recorder()
    host_eps(recorder.attach(tiny.patcher), _latent(), SIGMA, random_text_cond(kind))
    assert sorted(recorder.keys) == sorted(expected)
    assert len(recorder.keys) == len(set(recorder.keys)) == {SD15: 16, SDXL: 70}[kind]
    assert {h.key for h in recorder.hits if h.key[0] == "middle"} == {k for k in expected if k[0] == "middle"}


def test_attn2_batch_layout(tiny_sd15) -> None:
    recorder = Attn2Recorder()
    model = recorder.attach(tiny_sd15.patcher)
    host_eps(model, _latent(2), SIGMA, random_text_cond(SD15, batch=2))
    assert {tuple(h.cond_or_uncond) for h in recorder.hits} == {(0,)}
    assert {h.q_shape[0] for h in recorder.hits} == {2}
    recorder.hits.clear()
    host_eps(model, _latent(2), SIGMA, random_text_cond(SD15, batch=2), random_text_cond(SD15, batch=2, seed=1))
    assert {tuple(h.cond_or_uncond) for h in recorder.hits} == {(1, 0)}
    assert {h.q_shape[0] for h in recorder.hits} == {4}
    assert {"sigmas", "sample_sigmas", "uuids", "transformer_index", "block_index"} <= recorder.hits[0].extra_keys
    assert [h.transformer_index for h in recorder.hits] == list(range(16))


def test_attn2_patch_output_is_used(tiny_sd15) -> None:
    cond = random_text_cond(SD15)
    plain = host_eps(tiny_sd15.patcher, _latent(), SIGMA, cond)[0]
    recorded = host_eps(Attn2Recorder().attach(tiny_sd15.patcher), _latent(), SIGMA, cond)[0]
    zeroed = tiny_sd15.patcher.clone()
    for name, number, index in SD15_KEYS:
        zeroed.set_model_attn2_replace(lambda q, k, v, extra: torch.zeros_like(q), name, number, index)
    changed = host_eps(zeroed, _latent(), SIGMA, cond)[0]
    assert torch.allclose(recorded, plain, atol=1e-6)
    assert (changed - plain).abs().max() > 1e-2


# Parity: host noise prediction == diffusers twin.

@pytest.mark.parametrize("kind", [SD15, SDXL])
@pytest.mark.parametrize("with_uncond", [False, True], ids=["cond", "cond+uncond"])
def test_host_matches_diffusers(kind: str, with_uncond: bool, comfy_host, request: pytest.FixtureRequest) -> None:
    tiny = request.getfixturevalue(f"tiny_{kind}")
    size = {"width": 512, "height": 768, "crop_w": 8, "crop_h": 16} if kind == SDXL else {}
    cond = random_text_cond(kind, batch=2, seed=1, **size)
    uncond = random_text_cond(kind, batch=2, seed=2, **size) if with_uncond else None
    x = _latent(2)
    host = host_eps(tiny.patcher, x, SIGMA, cond, uncond)
    sampling = tiny.patcher.model.model_sampling
    twins = [twin_eps(tiny.diffusers, x, SIGMA, c, sampling) for c in ([cond, uncond] if with_uncond else [cond])]
    assert len(host) == len(twins)
    for ours, theirs in zip(host, twins):
        assert ours.abs().max() > 0.1
        assert_relative_close(ours, theirs)


# CLIP vision.

def test_tiny_clip_vision_matches_transformers(tiny_clip_vision) -> None:
    import comfy.clip_vision

    image = torch.rand(2, 200, 260, 3, generator=torch.Generator().manual_seed(0))
    out = tiny_clip_vision.host.encode_image(image, crop=True)
    pixels = comfy.clip_vision.clip_preprocess(image, size=224, crop=True).float()
    with torch.no_grad():
        ref = tiny_clip_vision.transformers(pixel_values=pixels, output_hidden_states=True)
    hidden = tiny_clip_vision.config["hidden_size"]
    assert out.penultimate_hidden_states.shape == (2, 257, hidden)
    assert out.image_embeds.shape == (2, tiny_clip_vision.config["projection_dim"])
    assert_relative_close(out.image_embeds, ref.image_embeds)
    assert_relative_close(out.penultimate_hidden_states, ref.hidden_states[-2])
    assert_relative_close(out.last_hidden_state, ref.last_hidden_state)


# Graphs through the host executor.

def _sampling_graph(model_ref: list, vae_ref: list, kind: str = SD15) -> dict:
    cond = {"kind": kind, "tokens": 77, "width": 64, "height": 64}
    return {
        "pos": {"class_type": graph.CONDITIONING_NODE, "inputs": dict(cond, seed=1)},
        "neg": {"class_type": graph.CONDITIONING_NODE, "inputs": dict(cond, seed=2)},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": model_ref, "seed": 0, "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": vae_ref}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "harness"}},
    }


def test_graph_checkpoint_lora_sample_save(host_graph, host_models, comfy_host) -> None:
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": host_models.checkpoint(SD15)}},
        "lora": {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["ckpt", 0], "lora_name": host_models.lora(SD15), "strength_model": 1.0}},
    }
    prompt.update(_sampling_graph(["lora", 0], ["ckpt", 2]))
    result = host_graph.run(prompt)
    assert len(result.output("lora").patches) == 16  # one attn2.to_k patch per cross-attention layer
    assert result.output("decode").shape == (1, 64, 64, 3)
    saved = result.ui["save"]["images"][0]
    assert (comfy_host.scratch / "output" / saved["subfolder"] / saved["filename"]).is_file()


def test_graph_unet_loader_and_vae_loader(host_graph, host_models) -> None:
    prompt = {
        "unet": {"class_type": "UNETLoader",
                 "inputs": {"unet_name": host_models.unet(SD15), "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": host_models.taesd()}},
    }
    prompt.update(_sampling_graph(["unet", 0], ["vae", 0]))
    result = host_graph.run(prompt)
    assert type(result.output("unet").model).__name__ == "BaseModel"
    assert torch.isfinite(result.output("sample")["samples"]).all()


def test_graph_harness_clip_vision_node(host_graph) -> None:
    prompt = {
        "cv": {"class_type": graph.CLIP_VISION_NODE, "inputs": {}},
        "img": {"class_type": graph.IMAGE_NODE, "inputs": {"seed": 0, "width": 96, "height": 80, "batch": 2}},
        "enc": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["cv", 0], "image": ["img", 0],
                                                             "crop": "center"}},
        "sink": {"class_type": graph.SINK_NODE, "inputs": {"value": ["enc", 0]}},
    }
    result = host_graph.run(prompt)
    assert result.output("enc").image_embeds.shape == (2, 16)


def test_graph_errors_carry_the_host_report(host_graph) -> None:
    prompt = {"img": {"class_type": graph.IMAGE_NODE, "inputs": {"seed": 0, "width": 8, "height": 8, "batch": 1}},
              "save": {"class_type": "SaveImage", "inputs": {"images": ["missing", 0], "filename_prefix": "x"}}}
    with pytest.raises(graph.GraphError, match="rejected"):
        host_graph.run(prompt)
