"""WebDataset tar shards, the format large image-text corpora ship in, read with the standard library.

A shard is a tar file whose members are grouped into samples by key: the member path up to the first dot of its
file name (`00042.jpg` and `00042.txt` form sample `00042`); members of one sample are adjacent. A sample needs one
image (jpg, jpeg, png, webp) and one caption (`.txt`, `.caption`, or `.json` with a "caption" or "text" field).
Shards are streamed member by member, never held in memory whole.
"""

from __future__ import annotations

import glob
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import DatasetError
from .sources import SHOWN, image_problem

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("txt", "caption")
JSON_EXTENSION = "json"
JSON_CAPTION_FIELDS = ("caption", "text")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class ShardSample:
    """One sample streamed from a shard. `identity` is `<shard file name>/<key>`."""

    identity: str
    image: bytes
    caption: str


def _expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> `a-000.tar a-001.tar a-002.tar` (zero padding kept), recursively."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") else 0
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [p for n in range(int(first), int(last) + 1) for p in _expand_braces(f"{head}{n:0{width}d}{tail}")]


def list_shards(specs: tuple[str, ...]) -> list[Path]:
    """Shard files from files, folders (every `.tar` inside), globs and brace ranges, in the order given."""
    shards: list[Path] = []
    for spec in specs:
        for pattern in _expand_braces(spec):
            path = Path(pattern)
            if path.is_dir():
                found = sorted(path.glob("*.tar"))
            elif glob.has_magic(pattern):
                found = sorted(Path(p) for p in glob.glob(pattern))
            else:
                found = [path]
            missing = [str(p) for p in found if not p.is_file()]
            if not found or missing:
                raise DatasetError(f"no shard file matches '{pattern}' (from --shards '{spec}').")
            shards += found
    return shards


def _split(name: str) -> tuple[str, str]:
    """Member path -> (sample key, lower-case extension), the WebDataset convention."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _caption(ext: str, data: bytes, where: str) -> str | None:
    if ext in TEXT_EXTENSIONS:
        return data.decode("utf-8").strip()
    if ext == JSON_EXTENSION:
        try:
            fields = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{where}: invalid JSON ({e}).") from e
        for name in JSON_CAPTION_FIELDS:
            if isinstance(fields, dict) and isinstance(fields.get(name), str):
                return fields[name].strip()
    return None


def _samples(shard: Path, members: Iterator[tuple[str, bytes]]) -> Iterator[ShardSample]:
    """Group adjacent members by key into samples; a key without image or caption is a DatasetError."""
    key, parts = None, {}
    for name, data in members:
        member_key, ext = _split(name)
        if member_key != key and key is not None:
            yield _sample(shard, key, parts)
            parts = {}
        key = member_key
        parts[ext] = data
    if key is not None:
        yield _sample(shard, key, parts)


def _sample(shard: Path, key: str, parts: dict[str, bytes]) -> ShardSample:
    where = f"shard '{shard}' sample '{key}'"
    image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    captions = (_caption(e, data, where) for e, data in parts.items())
    caption = next((c for c in captions if c is not None), None)
    if image is None or caption is None:
        lacks = "an image" if image is None else "a caption"
        raise DatasetError(f"{where} lacks {lacks} (members: {', '.join(sorted(parts))}). Each sample needs one of "
                           f"{', '.join(IMAGE_EXTENSIONS)} and a .txt / .caption / .json caption.")
    return ShardSample(f"{shard.name}/{key}", image, caption)


def _stream_members(shard: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if member.isfile():
                    yield member.name, tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"cannot read shard '{shard}': {e}. Replace the file.") from e


def stream_shard(shard: Path) -> Iterator[ShardSample]:
    """Every sample of `shard`, in file order, reading one member at a time."""
    yield from _samples(shard, _stream_members(shard))


def check_shards(shards: list[Path], check_images: bool = True) -> int:
    """Stream every shard once before training: each sample complete, each image decodable (header and structure).

    Returns:
        The number of samples.
    """
    total, bad = 0, []
    for shard in shards:
        for sample in stream_shard(shard):
            total += 1
            problem = image_problem(io.BytesIO(sample.image)) if check_images else None
            if problem is not None:
                bad.append(f"{sample.identity} ({problem})")
    if bad:
        shown = "; ".join(bad[:SHOWN]) + (f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
        raise DatasetError(f"{len(bad)} shard images cannot be read: {shown}. Rebuild those shards.")
    if total == 0:
        raise DatasetError(f"the {len(shards)} shards hold no samples.")
    return total
