"""Training data: folders with captions, JSON-lines manifests and WebDataset shards are listed and checked before
training (every bad file named), streamed deterministically, and preprocessed as the official scripts do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from ip_adapter import DatasetError
from ip_adapter.train.dataset import ExampleBuilder, PairDataset, ShardStream, shuffled
from ip_adapter.train.recipe import DropRates, sample_seed
from ip_adapter.train.shards import check_shards, list_shards, stream_shard
from ip_adapter.train.sources import folder_pairs, manifest_pairs
from ip_adapter.train.transforms import resize_center_crop
from tests.ip_adapter.train import tiny_models as tm
from tests.ip_adapter.train.helpers import shard_members, write_shard

CAPTIONS = {f"img{i}": f"caption {i}" for i in range(6)}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return tm.write_images(tmp_path / "images", CAPTIONS)


def test_folder_pairs_are_sorted_with_their_captions(images: Path) -> None:
    pairs = folder_pairs(images)
    assert [p.identity for p in pairs] == [f"img{i}.png" for i in range(6)]
    assert [p.caption for p in pairs] == list(CAPTIONS.values())


def test_missing_captions_are_all_named_before_training(images: Path) -> None:
    (images / "img2.txt").unlink()
    (images / "img4.txt").unlink()
    with pytest.raises(DatasetError, match=r"2 of 6 images .* no caption file: img2\.png; img4\.png"):
        folder_pairs(images)


def test_unreadable_images_are_named(images: Path) -> None:
    (images / "img3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    truncated = (images / "img5.png").read_bytes()
    (images / "img5.png").write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(DatasetError, match=r"2 images .* cannot be read: .*img3\.png.*img5\.png"):
        folder_pairs(images)
    assert len(folder_pairs(images, check_images=False)) == len(CAPTIONS)


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        folder_pairs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        folder_pairs(tmp_path / "empty")


def test_jsonl_and_json_list_manifests(images: Path, tmp_path: Path) -> None:
    rows = [{"image_file": f"img{i}.png", "text": f"t{i}"} for i in range(3)]
    lines = tmp_path / "data.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    listed = tmp_path / "data.json"
    listed.write_text(json.dumps(rows))
    for manifest in (lines, listed):
        pairs = manifest_pairs(manifest, images)
        assert [(p.image.name, p.caption) for p in pairs] == [(f"img{i}.png", f"t{i}") for i in range(3)]


@pytest.mark.parametrize(("line", "says"), [
    ('{"image_file": "img0.png"}', r"entry 2 \('img0\.png'\) has no caption"),
    ('{"text": "x"}', "entry 2 needs a string 'image_file'"),
    ('{"image_file": "gone.png", "text": "x"}', r"1 images named .* do not exist .*gone\.png"),
    ("{not json", "line 2 is not valid JSON"),
])
def test_bad_manifest_lines_are_named(images: Path, tmp_path: Path, line: str, says: str) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"image_file": "img1.png", "text": "ok"}) + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=says):
        manifest_pairs(manifest, images)


def test_shards_expand_and_stream_like_the_folder(images: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "part-000.tar", shard_members(images, ["img0", "img1", "img2"]))
    write_shard(shards / "part-001.tar", shard_members(images, ["img3", "img4", "img5"], caption_ext="json"))
    by_brace = list_shards((str(shards / "part-{000..001}.tar"),))
    assert by_brace == list_shards((str(shards),)) == list_shards((str(shards / "part-*.tar"),))
    samples = [s for shard in by_brace for s in stream_shard(shard)]
    assert [s.identity for s in samples] == [f"part-00{i // 3}.tar/img{i}" for i in range(6)]
    assert [s.caption for s in samples] == list(CAPTIONS.values())
    assert samples[4].image == (images / "img4.png").read_bytes()
    assert check_shards(by_brace) == 6
    with pytest.raises(DatasetError, match="no shard file matches"):
        list_shards((str(shards / "part-{000..002}.tar"),))


def test_shard_problems_are_found_before_training(images: Path, tmp_path: Path) -> None:
    members = shard_members(images, ["img0", "img1"])
    no_caption = write_shard(tmp_path / "a.tar", members[:3])  # img1 lost its caption
    with pytest.raises(DatasetError, match="shard .*a.tar' sample 'img1' lacks a caption"):
        check_shards([no_caption])
    broken = write_shard(tmp_path / "b.tar", [("img0.png", b"garbage"), ("img0.txt", b"a caption")])
    with pytest.raises(DatasetError, match=r"1 shard images cannot be read: b\.tar/img0"):
        check_shards([broken])
    (tmp_path / "c.tar").write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(DatasetError, match="cannot read shard"):
        check_shards([tmp_path / "c.tar"])


def test_resize_and_center_crop_match_torchvision() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for width, height in ((37, 23), (20, 31), (16, 16)):
        pixels = (torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy()
        image = Image.fromarray(pixels)
        reference = transforms.Compose([
            transforms.Resize(16, interpolation=transforms.InterpolationMode.BILINEAR), transforms.CenterCrop(16),
            transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])(image)
        ours = resize_center_crop(image, 16)
        assert torch.allclose(ours.pixels, reference, atol=1e-6)
        assert ours.original_size == (height, width)


class _Clip:
    """Stand-in CLIP preprocessing: the mean colour as a (3, 2, 2) tensor (never all zero for real images)."""

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image

        mean = image.resize((1, 1), Image.BILINEAR).getpixel((0, 0))
        return torch.tensor(mean, dtype=torch.float32).view(3, 1, 1).expand(3, 2, 2) + 1


def _builder(rates: DropRates, plus: bool = False) -> ExampleBuilder:
    return ExampleBuilder([tm._tokenizer()], _Clip(), 16, rates, seed=0, zero_pixels_on_drop=plus)


def test_examples_apply_their_drop(images: Path) -> None:
    from PIL import Image

    image = Image.open(images / "img0.png").convert("RGB")
    keep = _builder(DropRates(0, 0, 0))(image, "a cat", "x", 0)
    text_drop = _builder(DropRates(0, 1, 0))(image, "a cat", "x", 0)
    image_drop = _builder(DropRates(1, 0, 0), plus=True)(image, "a cat", "x", 0)
    base_drop = _builder(DropRates(1, 0, 0))(image, "a cat", "x", 0)
    empty = _builder(DropRates(0, 0, 0))(image, "", "x", 0)
    assert torch.equal(text_drop["input_ids"], empty["input_ids"]) and not torch.equal(keep["input_ids"],
                                                                                       empty["input_ids"])
    assert not text_drop["drop_image"] and image_drop["drop_image"] and base_drop["drop_image"]
    assert torch.count_nonzero(image_drop["clip_pixels"]) == 0  # Plus: zero (normalised) pixels
    assert torch.equal(base_drop["clip_pixels"], keep["clip_pixels"])  # base: zeroed later, as an embedding
    assert keep["seed"].item() == sample_seed(0, 0, "x")


def test_pair_dataset_draws_a_new_deterministic_order_each_epoch(images: Path) -> None:
    pairs = folder_pairs(images)
    first = PairDataset(pairs, _builder(DropRates(0, 0, 0)))
    second = PairDataset(pairs, _builder(DropRates(0, 0, 0)))
    orders = []
    for epoch in range(3):
        first.set_epoch(epoch)
        second.set_epoch(epoch)
        assert torch.equal(first.order, second.order)
        orders.append(first.order.tolist())
    assert len({tuple(o) for o in orders}) == 3 and all(sorted(o) == list(range(6)) for o in orders)


def test_shard_stream_splits_shards_over_workers_deterministically(images: Path, tmp_path: Path) -> None:
    shards = [write_shard(tmp_path / f"s{i}.tar", shard_members(images, [f"img{2 * i}", f"img{2 * i + 1}"]))
              for i in range(3)]
    stream = ShardStream(shards, _builder(DropRates(0, 0, 0)), buffer=3)

    def seen(workers: int) -> list[int]:
        loader = DataLoader(stream, batch_size=1, num_workers=workers)
        return [int(b["seed"]) for b in loader]

    one = seen(0)
    assert sorted(one) == sorted(sample_seed(0, 0, f"s{i // 2}.tar/img{i}") for i in range(6))
    assert seen(0) == one
    two = seen(2)
    assert sorted(two) == sorted(one) and seen(2) == two
    stream.set_epoch(1)
    assert seen(0) != one


def test_shuffle_buffer_keeps_every_sample_once() -> None:
    import random

    items = list(range(50))
    out = list(shuffled(iter(items), random.Random(0), 8))
    assert sorted(out) == items and out != items
    assert list(shuffled(iter(items), random.Random(0), 1)) == items


def test_copying_the_folder_keeps_identities(images: Path, tmp_path: Path) -> None:
    """Identities are relative paths: the same data in another place gets the same per-sample randomness."""
    moved = Path(shutil.copytree(images, tmp_path / "moved"))
    assert [p.identity for p in folder_pairs(images)] == [p.identity for p in folder_pairs(moved)]


def test_an_unchecked_broken_shard_image_fails_naming_the_sample(tmp_path: Path) -> None:
    broken = write_shard(tmp_path / "b.tar", [("k7.png", b"garbage"), ("k7.txt", b"a caption")])
    with pytest.raises(DatasetError, match=r"shard sample b\.tar/k7"):
        next(iter(ShardStream([broken], _builder(DropRates(0, 0, 0)), buffer=1)))
