"""The evaluation CLI: CLIP-I and CLIP-T (CLIPScore) on embeddings with known cosine similarities, the pairing of
generated images with references and captions, and the command end to end on a tiny CLIP model, against the
transformers model's own normalised embeddings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ip_adapter import DatasetError
from ip_adapter.evaluate import cli
from ip_adapter.evaluate.inputs import from_folders, from_manifest
from ip_adapter.evaluate.metrics import CLIPSCORE_W, cosine, score
from ip_adapter.evaluate.paper import TABLE1
from tests.ip_adapter.train import tiny_models as tm

ANGLES = (0.0, math.pi / 3, math.pi / 2, 2 * math.pi / 3)  # cosines 1, 0.5, 0, -0.5


def _at_angles(angles, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of 4-d vectors with the given angles between them, in a random rotation, with unequal lengths."""
    a = torch.zeros(len(angles), 4, dtype=torch.float64)
    b = torch.zeros_like(a)
    for i, angle in enumerate(angles):
        a[i, 0] = 1.0
        b[i, 0], b[i, 1] = math.cos(angle), math.sin(angle)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    return a @ q * scale, b @ q * 3.0


def test_metrics_on_known_cosines() -> None:
    gen, ref = _at_angles(ANGLES, scale=0.2)
    _, text = _at_angles((math.pi / 3,) * 4)
    text = torch.stack([ref[1], ref[0], ref[2], ref[3]])  # caption cosines 0.5, 1, 0, -0.5
    scores = score(gen, ref, text)
    expected_cos = [1.0, 0.5, 0.0, -0.5]
    assert torch.allclose(scores.per_image_i, torch.tensor(expected_cos, dtype=torch.float64), atol=1e-12)
    assert scores.clip_i == pytest.approx(sum(expected_cos) / 4, abs=1e-12)
    assert scores.clip_t == pytest.approx(CLIPSCORE_W * (0.5 + 1.0 + 0 + 0) / 4, abs=1e-12)  # max(cos, 0)
    assert scores.clip_t_cosine == pytest.approx((0.5 + 1.0 + 0 - 0.5) / 4, abs=1e-12)
    assert score(gen, ref, text, w=1.0).clip_t == pytest.approx(1.5 / 4, abs=1e-12)


def test_cosine_ignores_lengths_and_shapes_are_checked() -> None:
    a, b = _at_angles(ANGLES)
    assert torch.allclose(cosine(a * 7, b), cosine(a, b))
    with pytest.raises(ValueError):
        score(a, b, b[:2])


def test_paper_table_is_the_papers() -> None:
    rows = {r.method: (r.trainable_params, r.clip_t, r.clip_i) for r in TABLE1}
    assert rows["IP-Adapter"] == ("22M", 0.588, 0.828)
    assert rows["Open unCLIP (karlo)"] == ("893M", 0.608, 0.858)
    assert rows["ControlNet Shuffle"] == ("361M", 0.421, 0.616)
    assert len(rows) == 9


def _images(folder: Path, names: list[str], seed: int) -> None:
    tm.write_images(folder, {n: "" for n in names}, seed=seed)
    for n in names:
        (folder / f"{n}.txt").unlink()


@pytest.fixture
def eval_folders(tmp_path: Path) -> tuple[Path, Path]:
    refs, gen = tmp_path / "refs", tmp_path / "gen"
    tm.write_images(refs, {"cat": "a photo of a cat", "dog": "a dog on grass"}, seed=1)
    _images(gen, ["cat_0", "cat_1", "dog", "dog-3"], seed=2)
    return gen, refs


def test_generated_images_pair_with_their_reference_and_caption(eval_folders) -> None:
    gen, refs = eval_folders
    triples = from_folders(gen, refs)
    assert [(t.generated.name, t.reference.name, t.caption) for t in triples] == [
        ("cat_0.png", "cat.png", "a photo of a cat"), ("cat_1.png", "cat.png", "a photo of a cat"),
        ("dog-3.png", "dog.png", "a dog on grass"), ("dog.png", "dog.png", "a dog on grass")]


def test_unmatched_images_and_missing_captions_are_named(eval_folders) -> None:
    gen, refs = eval_folders
    _images(gen, ["bird_0"], seed=3)
    with pytest.raises(DatasetError, match="1 generated images match no reference.*bird_0.png"):
        from_folders(gen, refs)
    (gen / "bird_0.png").unlink()
    (refs / "dog.txt").unlink()
    with pytest.raises(DatasetError, match="captions missing .*dog.txt"):
        from_folders(gen, refs)


def test_manifest_lists_samples_per_reference(eval_folders, tmp_path: Path) -> None:
    gen, refs = eval_folders
    manifest = tmp_path / "eval.jsonl"
    manifest.write_text(json.dumps({"generated": ["gen/cat_0.png", "gen/cat_1.png"], "reference": "refs/cat.png",
                                    "text": "a cat"}) + "\n" + json.dumps(
        {"generated": "gen/dog.png", "reference": "refs/dog.png", "text": "a dog"}) + "\n")
    triples = from_manifest(manifest)
    assert [(t.generated.name, t.caption) for t in triples] == [("cat_0.png", "a cat"), ("cat_1.png", "a cat"),
                                                                 ("dog.png", "a dog")]
    manifest.write_text(json.dumps({"generated": "gen/none.png", "reference": "refs/cat.png", "text": "x"}))
    with pytest.raises(DatasetError, match="do not exist.*none.png"):
        from_manifest(manifest)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=len(tm.tiny_vocab()[0]), max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=tm.CLIP_CONFIG, projection_dim=8)).save_pretrained(folder)
    tm._tokenizer().save_pretrained(folder)
    size = tm.CLIP_IMAGE_SIZE
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def _reference_scores(clip_folder: Path, triples) -> tuple[list[float], list[float]]:
    """Cosines from the transformers model's own forward (normalised image_embeds / text_embeds)."""
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(clip_folder).eval()
    tok, proc = AutoTokenizer.from_pretrained(clip_folder), CLIPImageProcessor.from_pretrained(clip_folder)
    clip_t, clip_i = [], []
    with torch.no_grad():
        for t in triples:
            images = [Image.open(p).convert("RGB") for p in (t.generated, t.reference)]
            out = model(**tok([t.caption], padding=True, return_tensors="pt"),
                        pixel_values=proc(images=images, return_tensors="pt").pixel_values)
            clip_t.append(CLIPSCORE_W * max(float(out.image_embeds[0] @ out.text_embeds[0]), 0.0))
            clip_i.append(float(out.image_embeds[0] @ out.image_embeds[1]))
    return clip_t, clip_i


def test_cli_scores_match_clips_own_embeddings(eval_folders, tiny_clip, tmp_path: Path, capsys, caplog) -> None:
    gen, refs = eval_folders
    out = tmp_path / "scores.json"
    code = cli.main(["--clip", str(tiny_clip), "--generated", str(gen), "--references", str(refs),
                     "--output-json", str(out), "--name", "tiny"])
    assert code == 0
    report = json.loads(out.read_text())
    clip_t, clip_i = _reference_scores(tiny_clip, from_folders(gen, refs))
    assert [r["clip_t"] for r in report["per_image"]] == pytest.approx(clip_t, abs=1e-5)
    assert [r["clip_i"] for r in report["per_image"]] == pytest.approx(clip_i, abs=1e-5)
    assert report["clip_t"] == pytest.approx(sum(clip_t) / 4, abs=1e-5)
    assert report["clip_i"] == pytest.approx(sum(clip_i) / 4, abs=1e-5)
    assert (report["generated_images"], report["references"], report["comparable_with_paper"]) == (4, 2, False)
    table = capsys.readouterr().out
    assert "IP-Adapter" in table and "0.588" in table and "0.828" in table and "tiny *" in table
    assert "not CLIP ViT-L/14" in caplog.text


def test_cli_bad_input_exits_with_a_message(eval_folders, tiny_clip, tmp_path: Path, caplog) -> None:
    gen, _ = eval_folders
    assert cli.main(["--clip", str(tiny_clip), "--generated", str(gen)]) == cli.EXIT_BAD_INPUT
    assert "--references" in caplog.text
    assert cli.main(["--clip", str(tmp_path), "--manifest", str(tmp_path / "none.jsonl")]) == cli.EXIT_BAD_INPUT
