"""Saved image prompts: exact round trip with metadata, header-only detection, and refusal of anything that is not
an image-prompt safetensors file (pickles are never opened: a pickle that would run code stays inert)."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ip_adapter import ClipEncoding, ImagePrompt, ImagePromptFileError
from ip_adapter.face import FaceEmbeds
from ip_adapter.prompt_file import (
    FORMAT,
    PreparedImagePrompt,
    crop_of,
    is_image_prompt_file,
    load_image_prompt,
    read_metadata,
    save_image_prompt,
)


def _prompt(hidden: bool = True, crop: str | None = "pad") -> PreparedImagePrompt:
    g = torch.Generator().manual_seed(0)

    def enc(n: int) -> ClipEncoding:
        return ClipEncoding(torch.randn(n, 16, generator=g), torch.randn(n, 5, 32, generator=g) if hidden else None)

    return PreparedImagePrompt(enc(3), enc(1), crop=crop)


@pytest.mark.parametrize("hidden", [True, False])
def test_round_trip_is_exact_and_keeps_the_crop(tmp_path: Path, hidden: bool) -> None:
    prompt, path = _prompt(hidden), tmp_path / "p.safetensors"
    meta = save_image_prompt(prompt, path)
    loaded = load_image_prompt(path)
    assert isinstance(loaded, PreparedImagePrompt) and loaded.crop == "pad"
    for a, b in ((prompt.positive, loaded.positive), (prompt.negative, loaded.negative)):
        assert torch.equal(a.image_embeds, b.image_embeds)
        assert (a.hidden_states is None and b.hidden_states is None) or torch.equal(a.hidden_states, b.hidden_states)
    assert meta == read_metadata(path)
    assert meta["format"] == FORMAT and meta["num_images"] == "3" and meta["num_negative_images"] == "1"
    assert meta["image_embeds_width"] == "16" and meta["hidden_states_width"] == ("32" if hidden else "")
    assert meta["crop"] == "pad"


def test_crop_of_combined_prompts() -> None:
    assert crop_of([_prompt(crop="top"), _prompt(crop="top")]) == "top"
    assert crop_of([_prompt(crop="top"), _prompt(crop="pad")]) == "mixed"
    assert crop_of([ImagePrompt(_prompt().positive, _prompt().negative)]) is None


def test_other_safetensors_files_are_not_image_prompts(tmp_path: Path) -> None:
    other = tmp_path / "checkpoint.safetensors"
    save_file({"model.weight": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    assert not is_image_prompt_file(other)
    with pytest.raises(ImagePromptFileError, match="not an image prompt"):
        load_image_prompt(other)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    assert read_metadata(text) is None and not is_image_prompt_file(text)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("name", ["embeds.ipadpt", "embeds.bin", "embeds.pt"])
def test_pickles_are_never_opened(tmp_path: Path, name: str) -> None:
    payload = _Payload()
    payload.marker = str(tmp_path / "ran")
    (tmp_path / name).write_bytes(pickle.dumps(payload))
    with pytest.raises(ImagePromptFileError, match="never opened"):
        load_image_prompt(tmp_path / name)
    assert not (tmp_path / "ran").exists()


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    save_image_prompt(_prompt(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ImagePromptFileError, match="damaged|truncated"):
        load_image_prompt(path)


@pytest.mark.parametrize("tensors", [
    {"negative.image_embeds": torch.zeros(1, 16)},
    {"positive.image_embeds": torch.zeros(1, 16), "negative.image_embeds": torch.zeros(1, 8)},
    {"positive.image_embeds": torch.zeros(1, 16), "positive.hidden_states": torch.zeros(1, 5, 32),
     "negative.image_embeds": torch.zeros(1, 16)},
    {"positive.image_embeds": torch.zeros(2, 16), "positive.hidden_states": torch.zeros(1, 5, 32),
     "negative.image_embeds": torch.zeros(1, 16), "negative.hidden_states": torch.zeros(1, 5, 32)},
])
def test_inconsistent_files_are_reported(tmp_path: Path, tensors: dict) -> None:
    path = tmp_path / "p.safetensors"
    save_file(tensors, str(path), metadata={"format": FORMAT})
    with pytest.raises(ImagePromptFileError, match="(?i)save"):
        load_image_prompt(path)


def _face_prompt(clip: bool) -> PreparedImagePrompt:
    g = torch.Generator().manual_seed(1)
    width = 16 if clip else 0
    positive = ClipEncoding(torch.randn(2, width, generator=g), torch.randn(2, 5, 32, generator=g) if clip else None)
    negative = ClipEncoding(torch.zeros(1, width), torch.randn(1, 5, 32, generator=g) if clip else None)
    return PreparedImagePrompt(positive, negative, FaceEmbeds(torch.randn(2, 512, generator=g)), crop="center")


@pytest.mark.parametrize("clip", [True, False], ids=["plus", "faceid-without-clip"])
def test_face_prompts_keep_their_identities(tmp_path: Path, clip: bool) -> None:
    prompt, path = _face_prompt(clip), tmp_path / "face.safetensors"
    meta = save_image_prompt(prompt, path)
    loaded = load_image_prompt(path)
    assert meta["num_faces"] == "2"
    assert torch.equal(loaded.face.raw, prompt.face.raw)
    assert torch.equal(loaded.positive.image_embeds, prompt.positive.image_embeds)
    assert loaded.black_image is None and not loaded.default_negative


def test_the_default_negatives_black_image_is_kept(tmp_path: Path) -> None:
    prompt, path = _prompt(), tmp_path / "flux.safetensors"
    black = ClipEncoding(torch.full((1, 16), 2.0), torch.full((1, 5, 32), 3.0))
    save_image_prompt(replace(prompt, black_image=black), path)
    loaded = load_image_prompt(path)
    assert loaded.default_negative
    assert torch.equal(loaded.black_image.image_embeds, black.image_embeds)
    assert torch.equal(loaded.black_image.hidden_states, black.hidden_states)
    save_image_prompt(prompt, path)  # a user's negative images: no black image, as when encoded
    assert load_image_prompt(path).black_image is None


def test_damaged_face_identities_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "face.safetensors"
    save_image_prompt(_face_prompt(True), path)
    tensors = load_file(str(path))
    tensors["face.raw"] = tensors["face.raw"][:1]
    save_file(tensors, str(path), metadata=read_metadata(path))
    with pytest.raises(ImagePromptFileError, match="face.safetensors.*face identities of shape \\(1, 512\\)"):
        load_image_prompt(path)
