"""Combine / Save / Load Image Prompt in the host: weighted prompts combine as documented, saved prompts land in the
output folder with metadata, are listed (and only they) for loading from there and from models/image_prompts, load
back exactly, and against the wrong encoder fail with the same message as the original prompt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.host.ipa_setup import PackNodes, adapter_groups, reference_images, write_adapter
from tests.host.tiny_models import build_tiny_clip_vision


@pytest.fixture(scope="module")
def nodes(host_pack) -> PackNodes:
    return PackNodes.of(host_pack)


def _node(host_pack, node_id):
    return host_pack.registered[node_id]()


def _encode(nodes, clip, n, seed, crop="center"):
    with torch.inference_mode():
        return nodes.encode.encode(clip.host, reference_images(n, seed), crop)[0]


def _same(a, b) -> bool:
    pairs = [(a.positive.image_embeds, b.positive.image_embeds), (a.negative.image_embeds, b.negative.image_embeds),
             (a.positive.hidden_states, b.positive.hidden_states), (a.negative.hidden_states, b.negative.hidden_states)]
    return all(torch.equal(x, y) for x, y in pairs)


def test_combine_concat_at_weight_one_equals_encoding_the_images_together(host_pack, nodes, tiny_clip_vision):
    together = torch.cat([reference_images(2, 1), reference_images(1, 2)])
    with torch.inference_mode():
        joint = nodes.encode.encode(tiny_clip_vision.host, together, "center",
                                    torch.cat([reference_images(2, 3), reference_images(1, 4)]))[0]
        first = nodes.encode.encode(tiny_clip_vision.host, reference_images(2, 1), "center", reference_images(2, 3))[0]
        second = nodes.encode.encode(tiny_clip_vision.host, reference_images(1, 2), "center", reference_images(1, 4))[0]
        combined = _node(host_pack, "CombineImagePrompts").combine(first, 1.0, "concat", image_prompt_3=second,
                                                                   weight_3=1.0, weight_2=0.3)[0]
    assert combined.num_images == 3 and combined.crop == "center"
    for a, b in ((combined.positive, joint.positive), (combined.negative, joint.negative)):
        assert (a.image_embeds - b.image_embeds).abs().max() <= 1e-5
        assert (a.hidden_states - b.hidden_states).abs().max() <= 1e-5


def test_combine_refuses_prompts_of_different_encoders(host_pack, nodes, tiny_clip_vision, comfy_host):
    other = build_tiny_clip_vision(comfy_host.scratch / "configs", seed=9, hidden_size=48, projection_dim=24)
    core = host_pack.module.ip_adapter
    with pytest.raises(core.IncompatibleEncodingError, match="image_prompt_4.*image_prompt_1"):
        _node(host_pack, "CombineImagePrompts").combine(_encode(nodes, tiny_clip_vision, 1, 0), 1.0, "add",
                                                        image_prompt_4=_encode(nodes, other, 1, 0), weight_4=1.0)


def _save(host_pack, prompt, prefix="image_prompts/ip"):
    result = _node(host_pack, "SaveImagePrompt").save(prompt, prefix)
    entry = result["ui"]["image_prompts"][0]
    return entry, Path(os.path.join(comfy_output(), entry["subfolder"], entry["filename"]))


def comfy_output() -> str:
    import folder_paths

    return folder_paths.get_output_directory()


def test_saved_prompts_are_listed_and_load_back_exactly(host_pack, nodes, tiny_clip_vision):
    from ip_adapter.prompt_file import read_metadata

    prompt = _encode(nodes, tiny_clip_vision, 2, 5, crop="pad")
    entry, path = _save(host_pack, prompt, "prompts_test/mine")
    assert path.is_file() and entry["type"] == "output" and entry["filename"].endswith("_.safetensors")
    meta = read_metadata(path)
    assert (meta["num_images"], meta["crop"], meta["image_embeds_width"], meta["hidden_states_width"]) == \
        ("2", "pad", str(tiny_clip_vision.config["projection_dim"]), str(tiny_clip_vision.config["hidden_size"]))
    _, again = _save(host_pack, prompt, "prompts_test/mine")
    assert again != path  # the counter moves on
    choice = f"{os.path.join('prompts_test', path.name)} [output]"
    load = host_pack.registered["LoadImagePrompt"]
    assert choice in load.INPUT_TYPES()["required"]["image_prompt_file"][0]
    with torch.inference_mode():
        loaded = load().load(choice)[0]
    assert _same(loaded, prompt) and loaded.crop == "pad"


def test_only_image_prompts_are_listed_from_output_and_models_folder(host_pack, nodes, tiny_clip_vision):
    import folder_paths

    output = Path(comfy_output())
    (output / "checkpoints").mkdir(exist_ok=True)
    save_file({"w": torch.zeros(1)}, str(output / "checkpoints" / "saved_model.safetensors"))
    (output / ".hidden").mkdir(exist_ok=True)
    _save(host_pack, _encode(nodes, tiny_clip_vision, 1, 1), ".hidden/ip")
    models = Path(folder_paths.get_folder_paths("image_prompts")[0])
    models.mkdir(parents=True, exist_ok=True)
    entry, path = _save(host_pack, _encode(nodes, tiny_clip_vision, 1, 2), "moved/ip")
    os.replace(path, models / "shared.safetensors")
    folder_paths.filename_list_cache.clear()
    choices = host_pack.registered["LoadImagePrompt"].INPUT_TYPES()["required"]["image_prompt_file"][0]
    assert "shared.safetensors" in choices
    assert not any("saved_model" in c or ".hidden" in c for c in choices)
    with torch.inference_mode():
        assert host_pack.registered["LoadImagePrompt"]().load("shared.safetensors")[0].num_images == 1


def test_paths_outside_the_folders_are_refused(host_pack):
    core = host_pack.module.ip_adapter
    with pytest.raises(core.ImagePromptFileError, match="not found"):
        host_pack.registered["LoadImagePrompt"]().load("../../etc/passwd [output]")


def test_loading_against_the_wrong_encoder_fails_like_the_original(host_pack, nodes, tiny_sd15, tiny_clip_vision,
                                                                   host_models, comfy_host):
    from tests.host.ipa_setup import apply

    other = build_tiny_clip_vision(comfy_host.scratch / "configs", seed=9, hidden_size=48, projection_dim=24)
    adapter = nodes.load.load(write_adapter(host_models, adapter_groups("base", tiny_sd15, tiny_clip_vision),
                                            "files-base_sd15.safetensors"))[0]
    original = _encode(nodes, other, 1, 3)
    _, path = _save(host_pack, original, "wrong/ip")
    with torch.inference_mode():
        loaded = host_pack.registered["LoadImagePrompt"]().load(f"{os.path.join('wrong', path.name)} [output]")[0]
    core = host_pack.module.ip_adapter
    messages = []
    for prompt in (original, loaded):
        with pytest.raises(core.IncompatibleEncodingError) as caught:
            apply(nodes, tiny_sd15.patcher, adapter, prompt)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "files-base_sd15.safetensors" in messages[0]
