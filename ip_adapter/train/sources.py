"""Image-caption pairs on disk: a folder of images with same-named `.txt` captions, or a JSON-lines manifest.

Both are listed and checked completely before training starts (every caption present, every image readable), so a
bad file stops the run in seconds rather than hours into it. The order is fixed (sorted paths, manifest order) and
each pair has a stable identity, which the per-sample randomness and resuming rely on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import DatasetError
from .deps import require

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"
#: Official manifest fields (tutorial_train.py).
IMAGE_FIELD, TEXT_FIELD = "image_file", "text"
#: How many offending files a message lists before "and N more".
SHOWN = 5


@dataclass(frozen=True)
class ImageText:
    """One training pair. `identity` is stable across runs and machines (a relative path or a manifest line)."""

    identity: str
    image: Path
    caption: str


def _listing(problems: list[str]) -> str:
    more = f" and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return "; ".join(problems[:SHOWN]) + more


def open_image(source: Path | BinaryIO, name: str | None = None):
    """Open an image (a path or a binary file) fully decoded as RGB; a failure is a DatasetError naming it."""
    image_module = require("PIL.Image", "Reading training images")
    try:
        with image_module.open(source) as image:
            return image.convert("RGB")
    except (OSError, ValueError, image_module.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image '{name or source}': {e}. Replace or remove it.") from e


def image_problem(source: Path | BinaryIO) -> str | None:
    """Why PIL cannot open and verify the image at `source` (a path or a binary file), or None if it can."""
    image_module = require("PIL.Image", "Checking training images")
    try:
        with image_module.open(source) as image:
            image.verify()
    except Exception as e:  # PIL raises many types for broken files; every one means "unreadable"
        return f"{type(e).__name__}: {e}"
    return None


def unreadable_images(paths: list[Path]) -> list[str]:
    """The images among `paths` that PIL cannot open and verify, each with the reason."""
    return [f"'{path}' ({problem})" for path in paths if (problem := image_problem(path)) is not None]


def folder_pairs(root: Path, check_images: bool = True) -> list[ImageText]:
    """Every image under `root` (recursively, sorted) with the caption of its same-named `.txt` file."""
    if not root.is_dir():
        raise DatasetError(f"image folder '{root}' does not exist or is not a folder.")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DatasetError(f"image folder '{root}' holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    missing = [str(p.relative_to(root)) for p in images if not p.with_suffix(CAPTION_SUFFIX).is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(images)} images in '{root}' have no caption file: {_listing(missing)}. Each "
            f"image needs a same-named {CAPTION_SUFFIX} beside it (photo.jpg -> photo.txt); add them or move the "
            "images out.")
    pairs = [ImageText(p.relative_to(root).as_posix(), p, p.with_suffix(CAPTION_SUFFIX).read_text("utf-8").strip())
             for p in images]
    _finish(pairs, f"'{root}'", check_images)
    return pairs


def _manifest_rows(manifest: Path) -> list[tuple[int, object]]:
    text = manifest.read_text("utf-8")
    if text.lstrip().startswith("["):  # the official scripts' JSON list
        try:
            return list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as e:
            raise DatasetError(f"'{manifest}' is not valid JSON: {e}.") from e
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DatasetError(f"'{manifest}' line {number} is not valid JSON: {e}.") from e
    return rows


def _manifest_pair(manifest: Path, image_root: Path, number: int, row: object) -> ImageText:
    where = f"'{manifest}' entry {number}"
    if not isinstance(row, dict) or not isinstance(row.get(IMAGE_FIELD), str):
        raise DatasetError(f"{where} needs a string '{IMAGE_FIELD}' (found {str(row)[:80]}).")
    caption = row.get(TEXT_FIELD)
    if not isinstance(caption, str):
        raise DatasetError(f"{where} ('{row[IMAGE_FIELD]}') has no caption: it needs a string '{TEXT_FIELD}'.")
    return ImageText(f"{number}:{row[IMAGE_FIELD]}", image_root / row[IMAGE_FIELD], caption.strip())


def manifest_pairs(manifest: Path, image_root: Path | None = None, check_images: bool = True) -> list[ImageText]:
    """The pairs of a JSON-lines manifest (or a JSON list), image paths relative to `image_root`."""
    if not manifest.is_file():
        raise DatasetError(f"manifest '{manifest}' does not exist.")
    root = image_root or manifest.parent
    pairs = [_manifest_pair(manifest, root, n, row) for n, row in _manifest_rows(manifest)]
    if not pairs:
        raise DatasetError(f"manifest '{manifest}' has no entries.")
    missing = [str(p.image) for p in pairs if not p.image.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} images named in '{manifest}' do not exist under '{root}': "
                           f"{_listing(missing)}. Check --image-root.")
    _finish(pairs, f"'{manifest}'", check_images)
    return pairs


def _finish(pairs: list[ImageText], where: str, check_images: bool) -> None:
    if check_images:
        bad = unreadable_images([p.image for p in pairs])
        if bad:
            raise DatasetError(f"{len(bad)} images of {where} cannot be read: {_listing(bad)}. Replace or remove "
                               "them (or pass --no-image-check to find out during training instead).")
    empty = sum(1 for p in pairs if not p.caption)
    if empty:
        log.warning("%d of %d captions of %s are empty; those samples train on the empty prompt", empty, len(pairs),
                    where)
    log.info("dataset %s: %d image-caption pairs", where, len(pairs))
