"""Image prompts on disk: one `.safetensors` file (tensors plus text metadata), read without unpickling anything."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .encoding import ClipEncoding, ImagePrompt
from .errors import ImagePromptFileError
from .face import FaceEmbeds
from .spec import FACE_ID_DIM, ClipOutput, encoder_name

FORMAT = "ip_adapter.image_prompt"
VERSION = "1"
EXTENSION = ".safetensors"
#: Tensor names in the file: "<side>.<field>". The black-image side (FLUX.1's default negative) is optional.
SIDES = ("positive", "negative")
BLACK = "black_image"
EMBEDS, HIDDEN = "image_embeds", "hidden_states"
#: Face prompts' identity embeddings (N, 512), unnormalised as the recognizer gave them.
FACE = "face.raw"
HEADER_LENGTH_BYTES = 8
#: A safetensors header larger than this is not an image prompt (they hold a few hundred bytes of JSON).
MAX_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class PreparedImagePrompt(ImagePrompt):
    """An image prompt that remembers how its images were prepared (saved with it as metadata).

    Attributes:
        crop: Encode Image Prompt's crop mode, "mixed" for combined prompts of different modes, or None if unknown.
    """

    crop: str | None = None


MIXED = "mixed"


def crop_of(prompts: Sequence[ImagePrompt]) -> str | None:
    """The crop mode shared by `prompts` ("mixed" when they differ, None when none is known)."""
    modes = {getattr(p, "crop", None) for p in prompts} - {None}
    return modes.pop() if len(modes) == 1 else (MIXED if modes else None)


def _metadata(prompt: ImagePrompt, crop: str | None) -> dict[str, str]:
    positive = prompt.positive
    width = positive.image_embeds.shape[-1]
    hidden = positive.hidden_states
    meta = {
        "format": FORMAT, "version": VERSION, "num_images": str(prompt.num_images),
        "num_negative_images": str(prompt.negative.num_images), "image_embeds_width": str(width),
        "hidden_states_width": "" if hidden is None else str(hidden.shape[-1]),
        "encoder": encoder_name(ClipOutput.IMAGE_EMBEDS, width),
    }
    if crop is not None:
        meta["crop"] = crop
    if prompt.face is not None:
        meta["num_faces"] = str(prompt.face.num_faces)
    return meta


def save_image_prompt(prompt: ImagePrompt, path: str | os.PathLike) -> dict[str, str]:
    """Write `prompt` to `path` (a `.safetensors` file) and return the metadata written with it.

    Metadata (all strings): format, version, num_images, num_negative_images, image_embeds_width,
    hidden_states_width (empty without hidden states), encoder (its usual name), crop when known, and num_faces for
    face prompts. Tensors: each side's encodings, the black-image encoding when the negative is the default, and the
    face identities of face prompts.
    """
    crop = getattr(prompt, "crop", None)
    tensors = {}
    sides = zip((*SIDES, BLACK), (prompt.positive, prompt.negative, prompt.black_image))
    for side, encoding in ((side, e) for side, e in sides if e is not None):
        tensors[f"{side}.{EMBEDS}"] = encoding.image_embeds
        if encoding.hidden_states is not None:
            tensors[f"{side}.{HIDDEN}"] = encoding.hidden_states
    if prompt.face is not None:
        tensors[FACE] = prompt.face.raw
    meta = _metadata(prompt, crop)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=meta)
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The metadata of a safetensors file from its header alone (no tensor is read), or None when the file is not
    a readable safetensors file."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(HEADER_LENGTH_BYTES))
            if length > MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def is_image_prompt_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a safetensors file written by save_image_prompt (header check only)."""
    meta = read_metadata(path)
    return meta is not None and meta.get("format") == FORMAT


def _fail(path: str | os.PathLike, problem: str, fix: str) -> ImagePromptFileError:
    return ImagePromptFileError(f"'{os.path.basename(path)}' {problem}. {fix}")


def _encoding(tensors: dict[str, torch.Tensor], side: str, path: str | os.PathLike) -> ClipEncoding:
    embeds, hidden = tensors.get(f"{side}.{EMBEDS}"), tensors.get(f"{side}.{HIDDEN}")
    if embeds is None or embeds.dim() != 2 or embeds.shape[0] == 0:
        raise _fail(path, f"has no valid '{side}.{EMBEDS}' tensor (expected (images, width))",
                    "The file is damaged; save the image prompt again.")
    if hidden is not None and (hidden.dim() != 3 or hidden.shape[0] != embeds.shape[0]):
        raise _fail(path, f"has a '{side}.{HIDDEN}' tensor of shape {tuple(hidden.shape)} for {embeds.shape[0]} "
                    "images", "The file is damaged; save the image prompt again.")
    return ClipEncoding(embeds.float(), None if hidden is None else hidden.float())


def load_image_prompt(path: str | os.PathLike) -> PreparedImagePrompt:
    """Read an image prompt written by save_image_prompt.

    Raises:
        ImagePromptFileError: not a `.safetensors` file (pickles are never opened), not an image prompt, or damaged.
    """
    if os.path.splitext(str(path))[1].lower() != EXTENSION:
        raise _fail(path, "is not a .safetensors file", "Image prompts are read only from .safetensors files (pickled "
                    "embeds such as the old pack's .ipadpt are never opened); save the image prompt again with Save "
                    "Image Prompt.")
    meta = read_metadata(path)
    if meta is None or meta.get("format") != FORMAT:
        raise _fail(path, "is not an image prompt saved by Save Image Prompt",
                    "Pick a file saved by Save Image Prompt.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise _fail(path, f"could not be read ({e})", "The file is truncated or damaged; save it again.") from e
    positive, negative = (_encoding(tensors, side, path) for side in SIDES)
    if positive.hidden_states is not None and negative.hidden_states is None:
        raise _fail(path, "has hidden states for the positive side only", "Save the image prompt again.")
    if _widths(positive) != _widths(negative):
        raise _fail(path, "has positive and negative encodings of different widths", "Save the image prompt again.")
    black = _encoding(tensors, BLACK, path) if f"{BLACK}.{EMBEDS}" in tensors else None
    if black is not None and _widths(black) != _widths(negative):
        raise _fail(path, "has a black-image encoding of other widths", "Save the image prompt again.")
    return PreparedImagePrompt(positive, negative, _face(tensors, positive, path), black, crop=meta.get("crop") or None)


def _face(tensors: dict[str, torch.Tensor], positive: ClipEncoding, path: str | os.PathLike) -> FaceEmbeds | None:
    raw = tensors.get(FACE)
    if raw is None:
        return None
    if raw.dim() != 2 or raw.shape != (positive.num_images, FACE_ID_DIM):
        raise _fail(path, f"has face identities of shape {tuple(raw.shape)} for {positive.num_images} images "
                    f"(expected ({positive.num_images}, {FACE_ID_DIM}))", "The file is damaged; save it again.")
    return FaceEmbeds(raw.float())


def _widths(encoding: ClipEncoding) -> tuple[int, ...]:
    hidden = encoding.hidden_states
    return (encoding.image_embeds.shape[-1],) + (() if hidden is None else tuple(hidden.shape[1:]))
