"""Reading adapter files: both containers give the same adapter, training prefixes are accepted, dtypes are cast as
asked, and every bad input raises the pack's own error naming the file and what was found."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

from ip_adapter import (
    BaseFamily,
    CheckpointFormatError,
    IPAdapter,
    UnsafeCheckpointError,
    load_ip_adapter,
    read_checkpoint,
)
from tests.factories import (
    faceid_shapes,
    flat,
    image_proj_shapes,
    lora_shapes,
    mlp_shapes,
    random_groups,
    resampler_shapes,
)

CROSS, EMBED, TOKENS, WIDTH = 8, 12, 4, 8
SD15_LAYERS = 16
HALF_LAYER_KEY, LORA_LAYER_KEY = 5, 3
SD15_CROSS, SDXL_CROSS = 768, 2048
SDXL_LAYERS = 70
SMALL_LORA_RANK = 2
RESAMPLER_DIM, RESAMPLER_HEADS, RESAMPLER_QUERIES, RESAMPLER_DEPTH = 16, 2, 4, 2
FACE_ID_DIM = 16
Groups = dict[str, dict[str, torch.Tensor]]


def _groups(seed: int = 0) -> Groups:
    """A small SD1.5-shaped base adapter: ImageProjModel + 16 layers."""
    return random_groups(image_proj_shapes(CROSS, EMBED, TOKENS), [WIDTH] * SD15_LAYERS, CROSS, seed=seed)


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _save_bin(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _assert_same_adapter(a: IPAdapter, b: IPAdapter) -> None:
    assert a.spec == b.spec
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _assert_holds(adapter: IPAdapter, groups: Groups) -> None:
    """The adapter's tensors are the file's tensors (cast to the adapter's dtype)."""
    for module, tensors in ((adapter.image_proj, groups["image_proj"]), (adapter.layers, groups["ip_adapter"])):
        state = module.state_dict()
        assert state.keys() == tensors.keys()
        for key, tensor in tensors.items():
            assert torch.equal(state[key], tensor.to(adapter.dtype)), key


def test_safetensors_and_bin_give_the_same_adapter(tmp_path: Path) -> None:
    groups = _groups()
    from_sft = load_ip_adapter(_save_safetensors(tmp_path / "ip-adapter_sd15.safetensors", flat(groups)))
    from_bin = load_ip_adapter(_save_bin(tmp_path / "ip-adapter_sd15.bin", groups))
    _assert_same_adapter(from_sft, from_bin)
    _assert_holds(from_sft, groups)
    assert from_sft.name == "ip-adapter_sd15.safetensors"


@pytest.mark.parametrize("suffix", [".sft", ".SAFETENSORS"])
def test_other_safetensors_suffixes(tmp_path: Path, suffix: str) -> None:
    groups = _groups()
    _assert_holds(load_ip_adapter(_save_safetensors(tmp_path / f"adapter{suffix}", flat(groups))), groups)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_other_pickle_suffixes(tmp_path: Path, suffix: str) -> None:
    groups = _groups()
    _assert_holds(load_ip_adapter(_save_bin(tmp_path / f"adapter{suffix}", groups)), groups)


def _training_flat(groups: Groups) -> dict[str, torch.Tensor]:
    renamed = {"image_proj_model": groups["image_proj"], "adapter_modules": groups["ip_adapter"],
               "unet": {"conv_in.weight": torch.ones(2, 2), "down_blocks.0.attentions.0.proj_in.weight": torch.ones(2)}}
    return flat(renamed)


def test_training_prefixes_accepted_and_unet_ignored_safetensors(tmp_path: Path) -> None:
    groups = _groups()
    adapter = load_ip_adapter(_save_safetensors(tmp_path / "checkpoint-1000.safetensors", _training_flat(groups)))
    _assert_holds(adapter, groups)


def test_training_prefixes_accepted_and_unet_ignored_bin(tmp_path: Path) -> None:
    groups = _groups()
    nested = {"image_proj_model": groups["image_proj"], "adapter_modules": groups["ip_adapter"],
              "unet": {"conv_in.weight": torch.ones(2, 2)}}
    _assert_holds(load_ip_adapter(_save_bin(tmp_path / "pytorch_model.bin", nested)), groups)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16], ids=str)
def test_mixed_file_dtypes_cast_to_the_requested_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    groups = _groups()
    mixed = {"image_proj": {k: v.float() for k, v in groups["image_proj"].items()},
             "ip_adapter": {k: v.half() for k, v in groups["ip_adapter"].items()}}
    adapter = load_ip_adapter(_save_bin(tmp_path / "ip-adapter-plus_sd15.bin", mixed), dtype=dtype)
    assert {p.dtype for p in adapter.parameters()} == {dtype}
    _assert_holds(adapter, mixed)


# --- bad inputs -----------------------------------------------------------------------------------------------------


def _drop_to_v_ip(groups: Groups) -> Groups:
    del groups["ip_adapter"][f"{HALF_LAYER_KEY}.to_v_ip.weight"]
    return groups


def _unknown_layer_key(groups: Groups) -> Groups:
    groups["ip_adapter"]["1.to_q_ip.weight"] = torch.zeros(WIDTH, CROSS)
    return groups


def _wrong_norm_shape(groups: Groups) -> Groups:
    groups["image_proj"]["norm.bias"] = torch.zeros(CROSS + 1)
    return groups


def _unknown_projection(groups: Groups) -> Groups:
    groups["image_proj"] = {"weird.weight": torch.zeros(2, 2)}
    return groups


def _sft(edit: Callable[[Groups], Groups]) -> Callable[[Path], Path]:
    return lambda path: _save_safetensors(path, flat(edit(_groups())))


def _truncated(write: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        data = write(path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    return build


def _raw_safetensors(tensors: dict[str, tuple[int, ...]]) -> Callable[[Path], Path]:
    return lambda path: _save_safetensors(path, {k: torch.zeros(s) for k, s in tensors.items()})


def _non_tensor_entry(path: Path) -> Path:
    groups = _groups()
    groups["ip_adapter"]["step"] = 1000
    return _save_bin(path, groups)


def _text_file(path: Path) -> Path:
    path.write_text("not a model")
    return path


@dataclass(frozen=True)
class BadFile:
    """A broken input: how to write it, under which file name, and what the message must say."""

    id: str
    file_name: str
    build: Callable[[Path], Path]
    says: tuple[str, ...]


BAD_FILES = [
    BadFile("truncated-safetensors", "ip-adapter_sd15.safetensors",
            _truncated(_sft(lambda g: g)), ("truncated",)),
    BadFile("truncated-bin", "ip-adapter_sd15.bin",
            _truncated(lambda p: _save_bin(p, _groups())), ("truncated",)),
    BadFile("lora", "add_detail.safetensors",
            _raw_safetensors({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
                              "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4)}),
            ("LoRA", "lora_unet_down_blocks_0_attentions_0_proj_in")),
    BadFile("unet", "v1-5-pruned.safetensors",
            _raw_safetensors({"model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
                              "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}),
            ("UNet", "model.diffusion_model.")),
    BadFile("clip-vision", "CLIP-ViT-H-14.safetensors",
            _raw_safetensors({"vision_model.embeddings.class_embedding": (4,)}), ("CLIP vision",)),
    BadFile("missing-to_v_ip", "ip-adapter_sd15.safetensors", _sft(_drop_to_v_ip),
            (f"layer {HALF_LAYER_KEY} lacks ['to_v_ip']",)),
    BadFile("unknown-layer-key", "ip-adapter_sd15.safetensors", _sft(_unknown_layer_key),
            ("ip_adapter.1.to_q_ip.weight",)),
    BadFile("key-outside-groups", "ip-adapter_sd15.safetensors",
            lambda p: _save_safetensors(p, {**flat(_groups()), "text_encoder.proj.weight": torch.zeros(2)}),
            ("text_encoder.proj.weight",)),
    BadFile("non-tensor-entry", "ip-adapter_sd15.bin", _non_tensor_entry, ("ip_adapter.step", "int")),
    BadFile("wrong-extension", "ip-adapter_sd15.onnx", _text_file, ("'.onnx'",)),
    BadFile("missing-file", "ip-adapter_sd15.safetensors", lambda p: p, ("does not exist",)),
    BadFile("wrong-image-proj-shape", "ip-adapter_sd15.safetensors", _sft(_wrong_norm_shape),
            ("image_proj", "norm.bias")),
    BadFile("unknown-projection", "ip-adapter_sd15.safetensors", _sft(_unknown_projection),
            ("unknown image projection", "weird.weight")),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=lambda c: c.id)
def test_bad_input_raises_pack_error_naming_the_file(tmp_path: Path, case: BadFile) -> None:
    path = case.build(tmp_path / case.file_name)
    with pytest.raises(CheckpointFormatError) as info:
        load_ip_adapter(path)
    message = str(info.value)
    assert case.file_name in message
    for fragment in case.says:
        assert fragment in message
    assert not isinstance(info.value, UnsafeCheckpointError)


# --- layer counts: any gap-free run of odd indices is a layout (standard or custom); anything else is refused -----


def _odd(n: int) -> list[int]:
    """The indices of n cross-attention layers: 1, 3, ..., 2n-1."""
    return list(range(1, 2 * n, 2))


def _at_indices(indices: list[int], cross: int = CROSS) -> Groups:
    """An adapter whose layers sit at exactly `indices`."""
    groups = random_groups(image_proj_shapes(cross, EMBED, TOKENS), [WIDTH] * len(indices), cross)
    layers = groups["ip_adapter"]
    groups["ip_adapter"] = {f"{i}.{proj}.weight": layers[f"{2 * n + 1}.{proj}.weight"]
                            for n, i in enumerate(indices) for proj in ("to_k_ip", "to_v_ip")}
    return groups


@dataclass(frozen=True)
class BadLayers:
    """Layer indices no exporter writes, and what the message must name: the count found and what was expected."""

    id: str
    indices: list[int]
    says: tuple[str, ...]


BAD_LAYERS = [
    BadLayers("inner-gap-sd15", [i for i in _odd(16) if i != 13],
              ("15 cross-attention layers", "up to index 31, 16 layers", "missing [13]", "extra none")),
    BadLayers("first-layer-missing", _odd(16)[1:], ("15 cross-attention layers", "up to index 31", "missing [1]")),
    BadLayers("gap-in-a-custom-count", [i for i in _odd(10) if i != 9],
              ("9 cross-attention layers", "up to index 19, 10 layers", "missing [9]", "extra none")),
    BadLayers("even-index", _odd(15) + [32], ("16 cross-attention layers", "missing [31]", "extra [32]")),
    BadLayers("even-indices", list(range(2, 34, 2)),  # (from index 0 it would be InstantX FLUX.1's layout)
              ("16 cross-attention layers", "missing [1, 3, 5, 7, ..., 29, 31]", "extra [2, 4, 6, 8, ..., 30, 32]")),
    BadLayers("sdxl-with-gaps", [i for i in _odd(SDXL_LAYERS) if i not in (41, 43, 45)],
              ("67 cross-attention layers", "up to index 139, 70 layers", "missing [41, 43, 45]", "extra none")),
]


@pytest.mark.parametrize("case", BAD_LAYERS, ids=lambda c: c.id)
def test_layer_gaps_fail_naming_the_count_found_and_expected(tmp_path: Path, case: BadLayers) -> None:
    path = _save_safetensors(tmp_path / "ip-adapter_sd15.safetensors", flat(_at_indices(case.indices)))
    with pytest.raises(CheckpointFormatError) as info:
        load_ip_adapter(path)
    message = str(info.value)
    assert message.startswith("'ip-adapter_sd15.safetensors': ")
    for fragment in (*case.says, "SD1.5 adapters have 16 layers, SDXL adapters 70", "download or export it again"):
        assert fragment in message


def test_a_layer_group_without_layers_fails(tmp_path: Path) -> None:
    groups = _groups()
    groups["ip_adapter"] = {k: torch.zeros(shape) for k, shape in lora_shapes([WIDTH], CROSS, SMALL_LORA_RANK).items()}
    with pytest.raises(CheckpointFormatError, match=r"'lora-only\.safetensors'.* no cross-attention layers"):
        load_ip_adapter(_save_safetensors(tmp_path / "lora-only.safetensors", flat(groups)))


@pytest.mark.parametrize(
    ("layers", "cross", "family"),
    [(1, CROSS, BaseFamily.SD15), (10, CROSS, BaseFamily.SD15), (SD15_LAYERS - 1, CROSS, BaseFamily.SD15),
     (SD15_LAYERS + 1, CROSS, BaseFamily.SD15), (SD15_LAYERS, SDXL_CROSS, BaseFamily.SDXL),
     (SDXL_LAYERS, SD15_CROSS, BaseFamily.SD15), (SDXL_LAYERS + 1, SDXL_CROSS, BaseFamily.SDXL)],
    ids=["1", "10", "15", "17", "16-at-sdxl-width", "70-at-sd15-width", "71-at-sdxl-width"])
def test_gap_free_odd_runs_load_as_a_custom_layout(tmp_path: Path, layers: int, cross: int,
                                                   family: BaseFamily) -> None:
    """Adapters trained for pruned or distilled UNets have their own layer count, and a pruned SDXL UNet may have
    16 layers: the loader accepts any gap-free run of odd indices 1, 3, ..., 2n-1, takes the family from a known
    context width, and leaves the check against the model's cross-attention layers to Apply."""
    path = _save_safetensors(tmp_path / "pruned.safetensors", flat(_at_indices(_odd(layers), cross)))
    adapter = load_ip_adapter(path)
    assert (adapter.spec.family, adapter.spec.num_layers, adapter.spec.custom_layout) == (family, layers, True)
    assert adapter.layers.ip_indices == _odd(layers)
    assert f"{layers} layers, custom layout" in adapter.spec.describe()


@pytest.mark.parametrize(("layers", "cross", "family"), [(SD15_LAYERS, CROSS, BaseFamily.SD15),
                                                         (SD15_LAYERS, SD15_CROSS, BaseFamily.SD15),
                                                         (SDXL_LAYERS, SDXL_CROSS, BaseFamily.SDXL)],
                         ids=["sd15-tiny-width", "sd15", "sdxl"])
def test_standard_layer_counts_are_not_custom(tmp_path: Path, layers: int, cross: int, family: BaseFamily) -> None:
    adapter = load_ip_adapter(_save_safetensors(tmp_path / "a.safetensors", flat(_at_indices(_odd(layers), cross))))
    assert (adapter.spec.family, adapter.spec.num_layers, adapter.spec.custom_layout) == (family, layers, False)


def _drop_image_proj_key(image_proj: dict, key: str) -> Callable[[Groups], Groups]:
    def edit(_: Groups) -> Groups:
        groups = random_groups(image_proj, [WIDTH] * SD15_LAYERS, CROSS)
        del groups["image_proj"][key]
        return groups
    return edit


def _drop_lora_up(_: Groups) -> Groups:
    groups = random_groups(faceid_shapes(CROSS, TOKENS, FACE_ID_DIM), [WIDTH] * SD15_LAYERS, CROSS,
                           extra=lambda: lora_shapes([WIDTH] * SD15_LAYERS, CROSS, SMALL_LORA_RANK))
    del groups["ip_adapter"][f"{LORA_LAYER_KEY}.to_q_lora.up.weight"]
    return groups


_RESAMPLER = resampler_shapes(RESAMPLER_DIM, RESAMPLER_HEADS, RESAMPLER_QUERIES, EMBED, CROSS, RESAMPLER_DEPTH)


@pytest.mark.parametrize(
    ("edit", "key"),
    [(_drop_image_proj_key(_RESAMPLER, "proj_out.weight"), "proj_out.weight"),
     (_drop_image_proj_key(mlp_shapes(CROSS, EMBED), "proj.2.weight"), "proj.2.weight"),
     (_drop_lora_up, f"{LORA_LAYER_KEY}.to_q_lora.up.weight")],
    ids=["resampler-without-proj_out", "full-face-without-proj.2", "faceid-lora-without-up"],
)
def test_incomplete_group_raises_pack_error(tmp_path: Path, edit: Callable[[Groups], Groups], key: str) -> None:
    """Keys that detection does not look at but the modules need: a pack error, never a bare KeyError."""
    path = _save_safetensors(tmp_path / "incomplete.safetensors", flat(edit(_groups())))
    with pytest.raises(CheckpointFormatError, match=key.replace(".", r"\.")) as info:
        load_ip_adapter(path)
    assert "incomplete.safetensors" in str(info.value)


class _CodeOnUnpickle:
    """A pickle payload that creates a directory when unpickled (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def _malicious_bin(path: Path, marker: Path) -> Path:
    groups = _groups()
    groups["image_proj"]["proj.weight"] = _CodeOnUnpickle(marker)
    return _save_bin(path, groups)


def test_malicious_pickle_is_refused_before_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _malicious_bin(tmp_path / "ip-adapter_sd15.bin", marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_ip_adapter(path)
    assert "ip-adapter_sd15.bin" in str(info.value)
    assert not marker.exists()


def test_malicious_fixture_really_runs_code_when_unpickled_unsafely(tmp_path: Path) -> None:
    """Control for the test above: the payload is live, so its marker's absence there means something."""
    marker = tmp_path / "pwned"
    path = _malicious_bin(tmp_path / "evil.bin", marker)
    torch.load(path, weights_only=False)
    assert marker.is_dir()


def test_read_checkpoint_keeps_the_file_tensors(tmp_path: Path) -> None:
    groups = _groups()
    read = read_checkpoint(_save_safetensors(tmp_path / "a.safetensors", flat(groups)))
    assert read.name == "a.safetensors"
    for group in ("image_proj", "ip_adapter"):
        got = getattr(read, group)
        assert got.keys() == groups[group].keys()
        assert all(torch.equal(got[k], groups[group][k]) for k in got)


def test_loading_in_the_file_dtype_adopts_the_read_tensors_without_copies(tmp_path: Path) -> None:
    groups = read_checkpoint(_save_safetensors(tmp_path / "nocopy.safetensors", flat(_groups())))
    adapter = IPAdapter.from_groups(groups, dtype=torch.float32)
    read = {t.data_ptr() for g in (groups.image_proj, groups.ip_adapter) for t in g.values()}
    assert {p.data_ptr() for p in adapter.parameters()} == read
    cast = IPAdapter.from_groups(groups, dtype=torch.float16)
    assert not {p.data_ptr() for p in cast.parameters()} & read
