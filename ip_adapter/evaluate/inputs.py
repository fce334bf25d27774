"""What to score: (generated image, reference image, caption) triples from folders or a JSON-lines manifest.

Folders: each generated image belongs to the reference with the same stem, or with its stem minus a sample suffix
(`_<n>` or `-<n>`: `cat_0.png` ... `cat_3.png` are four samples for `cat.jpg`); the caption is `<reference
stem>.txt` in the captions folder (default: the references folder). Manifest lines:
`{"generated": "out/cat_0.png" or [...], "reference": "refs/cat.jpg", "text": "a cat"}`, paths relative to the
manifest's folder (or --root).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from ..train.sources import IMAGE_SUFFIXES

_SAMPLE_SUFFIX = re.compile(r"^(.*)[_-]\d+$")
SHOWN = 5


@dataclass(frozen=True)
class Triple:
    generated: Path
    reference: Path
    caption: str


def _images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{what} folder '{folder}' does not exist.")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise DatasetError(f"{what} folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return found


def _reference_for(stem: str, references: dict[str, Path]) -> Path | None:
    if stem in references:
        return references[stem]
    match = _SAMPLE_SUFFIX.match(stem)
    return references.get(match.group(1)) if match else None


def _listing(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def from_folders(generated: Path, references: Path, captions: Path | None = None) -> list[Triple]:
    """Pair every generated image with its reference and the reference's caption."""
    refs = {p.stem: p for p in _images(references, "references")}
    caption_dir = captions or references
    triples, orphans, uncaptioned = [], [], set()
    for image in _images(generated, "generated"):
        ref = _reference_for(image.stem, refs)
        if ref is None:
            orphans.append(image.name)
            continue
        text_file = caption_dir / f"{ref.stem}.txt"
        if not text_file.is_file():
            uncaptioned.add(text_file.name)
            continue
        triples.append(Triple(image, ref, text_file.read_text("utf-8").strip()))
    if orphans:
        raise DatasetError(f"{len(orphans)} generated images match no reference in '{references}': "
                           f"{_listing(orphans)}. Name them <reference stem>.png or <reference stem>_<n>.png.")
    if uncaptioned:
        raise DatasetError(f"captions missing in '{caption_dir}': {_listing(sorted(uncaptioned))}.")
    return triples


def _manifest_entry(row: object, root: Path, where: str) -> list[Triple]:
    if not isinstance(row, dict) or not isinstance(row.get("reference"), str) or not isinstance(row.get("text"), str):
        raise DatasetError(f"{where} needs string 'reference' and 'text' fields (found {str(row)[:80]}).")
    generated = row.get("generated")
    generated = [generated] if isinstance(generated, str) else generated
    if not generated or not all(isinstance(g, str) for g in generated):
        raise DatasetError(f"{where} needs 'generated': a path or a list of paths.")
    return [Triple(root / g, root / row["reference"], row["text"].strip()) for g in generated]


def from_manifest(manifest: Path, root: Path | None = None) -> list[Triple]:
    """The triples of a JSON-lines manifest; every file must exist."""
    if not manifest.is_file():
        raise DatasetError(f"manifest '{manifest}' does not exist.")
    base, triples = root or manifest.parent, []
    for number, line in enumerate(manifest.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"'{manifest}' line {number} is not valid JSON: {e}.") from e
        triples += _manifest_entry(row, base, f"'{manifest}' line {number}")
    if not triples:
        raise DatasetError(f"manifest '{manifest}' has no entries.")
    missing = sorted({str(p) for t in triples for p in (t.generated, t.reference) if not p.is_file()})
    if missing:
        raise DatasetError(f"{len(missing)} files named in '{manifest}' do not exist: {_listing(missing)}.")
    return triples
