"""Command line of `python -m ip_adapter.evaluate`: score generated images, print the paper's Table 1 with our row
beside it, write JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import IPAdapterError, TrainingSetupError
from .encoder import VIT_L14, ClipScorer, load_scorer
from .inputs import Triple, from_folders, from_manifest
from .metrics import CLIPSCORE_W, Scores, score
from .paper import PROTOCOL, TABLE1

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ip_adapter.evaluate",
        description="CLIP-T and CLIP-I of generated images (arXiv 2308.06721 §4.2.1): CLIP-T is CLIPScore "
                    "(w * max(cos, 0)) of each image against its reference's caption, CLIP-I the cosine similarity "
                    "to its reference image, both with CLIP ViT-L/14 and averaged over every generated image.")
    p.add_argument("--clip", type=Path, required=True, help="local folder of openai/clip-vit-large-patch14")
    p.add_argument("--generated", type=Path, help="folder of generated images (<reference stem>[_<n>].png)")
    p.add_argument("--references", type=Path, help="folder of reference (image prompt) images")
    p.add_argument("--captions", type=Path, help="folder of <reference stem>.txt captions (default: --references)")
    p.add_argument("--manifest", type=Path, help='JSON-lines of {"generated", "reference", "text"} instead of '
                   "folders")
    p.add_argument("--root", type=Path, help="folder the manifest's paths are relative to (default: its folder)")
    p.add_argument("--output-json", type=Path, help="write the scores (and per-image values) here")
    p.add_argument("--name", default="ours", help="this row's name in the table")
    p.add_argument("--clip-score-w", type=float, default=CLIPSCORE_W, help="CLIPScore weight w (default 2.5)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--batch-size", type=int, default=32)
    return p


def triples_from_args(args: argparse.Namespace) -> list[Triple]:
    if args.manifest is not None:
        if args.generated or args.references:
            raise TrainingSetupError("give either --manifest or --generated/--references, not both.")
        return from_manifest(args.manifest, args.root)
    if args.generated is None or args.references is None:
        raise TrainingSetupError("give --generated and --references folders (or a --manifest).")
    return from_folders(args.generated, args.references, args.captions)


def evaluate(triples: list[Triple], scorer: ClipScorer, w: float = CLIPSCORE_W, batch_size: int = 32) -> Scores:
    """Embed each distinct image and caption once, then score every generated image."""
    generated = scorer.images([t.generated for t in triples], batch_size)
    refs = sorted({t.reference for t in triples})
    ref_embeds = scorer.images(refs, batch_size)
    ref_index = {r: i for i, r in enumerate(refs)}
    texts = sorted({t.caption for t in triples})
    text_embeds = scorer.texts(texts, batch_size)
    text_index = {c: i for i, c in enumerate(texts)}
    return score(generated, ref_embeds[[ref_index[t.reference] for t in triples]],
                 text_embeds[[text_index[t.caption] for t in triples]], w)


def table(scores: Scores, name: str, comparable: bool) -> str:
    """The paper's Table 1 rows with ours appended (a plain-text table)."""
    rows = [(r.group, r.method, r.trainable_params, f"{r.clip_t:.3f}", f"{r.clip_i:.3f}") for r in TABLE1]
    note = "" if comparable else " *"
    rows.append(("This run", name + note, "", f"{scores.clip_t:.3f}", f"{scores.clip_i:.3f}"))
    header = ("group", "method", "params", "CLIP-T", "CLIP-I")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"Paper: {PROTOCOL}. This run: {scores.count} generated images.")
    if not comparable:
        lines.append("* scored with another CLIP than ViT-L/14: not comparable with the paper's rows.")
    return "\n".join(lines)


def report(scores: Scores, triples: list[Triple], scorer: ClipScorer, args: argparse.Namespace) -> dict:
    return {
        "name": args.name, "clip_t": scores.clip_t, "clip_i": scores.clip_i, "clip_t_cosine": scores.clip_t_cosine,
        "clip_score_w": args.clip_score_w, "generated_images": scores.count,
        "references": len({t.reference for t in triples}), "clip_model": str(scorer.folder),
        "clip_architecture": scorer.architecture(), "paper_encoder": VIT_L14,
        "comparable_with_paper": scorer.is_paper_encoder,
        "paper_table1": [vars(r) for r in TABLE1],
        "per_image": [{"generated": str(t.generated), "reference": str(t.reference), "clip_t": float(ct),
                       "clip_i": float(ci)} for t, ct, ci in zip(triples, scores.per_image_t, scores.per_image_i)],
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        triples = triples_from_args(args)
        scorer = load_scorer(args.clip, args.device)
        scores = evaluate(triples, scorer, args.clip_score_w, args.batch_size)
    except IPAdapterError as e:
        log.error("%s", e)
        return EXIT_BAD_INPUT
    sys.stdout.write(table(scores, args.name, scorer.is_paper_encoder) + "\n")
    if args.output_json is not None:
        args.output_json.write_text(json.dumps(report(scores, triples, scorer, args), indent=1), "utf-8")
        log.info("wrote %s", args.output_json)
    return 0
