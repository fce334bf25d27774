"""Training end to end on tiny SD1.5- and SDXL-shaped models (16 / 70 cross-attention layers): two dozen steps on
two images lower a held-out loss, for base and Plus adapters; the export loads through the pack's loader and
computes what the trained modules compute; training checkpoints (ours and the official scripts') convert to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ip_adapter import load_ip_adapter
from ip_adapter.spec import ProjectionType
from ip_adapter.train.checkpoints import ADAPTER_FILE, complete_checkpoints
from ip_adapter.train.config import DataConfig
from ip_adapter.train.export import convert_checkpoint, write_adapter
from ip_adapter.train.loop import run_training
from ip_adapter.train.setup import Run, prepare_run
from tests.ip_adapter.train import tiny_models as tm
from tests.ip_adapter.train.helpers import config, held_out_loss, max_difference, reset_accelerate

STEPS = 24
#: A learning rate far above the recipe's 1e-4, so that two dozen steps move a random tiny model measurably.
OVERFIT_LR = 1e-1
#: The held-out loss must drop below this fraction of its start (measured after 24 steps, base / plus: SD1.5
#: 0.921 / 0.947, SDXL 0.942 / 0.958; float rounding moves it by ~1e-6).
MAX_RATIO = 0.985
CASES = [(tm.SD15, "base"), (tm.SD15, "plus"), (tm.SDXL, "base"), (tm.SDXL, "plus")]


@dataclass
class Trained:
    family: str
    kind: str
    run: Run
    before: float
    after: float
    exported: Path


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def trained(request, folders, tmp_path_factory) -> Trained:
    family, kind = request.param
    output = tmp_path_factory.mktemp(f"run-{family}-{kind}")
    cfg = config(folders.base(family), folders.encoder, output, DataConfig(image_folder=folders.images), kind=kind,
                 max_steps=STEPS, learning_rate=OVERFIT_LR)
    try:
        run = prepare_run(cfg)
        before = held_out_loss(run)
        run_training(run)
        after = held_out_loss(run)
    finally:
        reset_accelerate()
    exported = output / "exported.safetensors"
    write_adapter(run.adapter.official_state_dict(), exported, "fp32")
    return Trained(family, kind, run, before, after, exported)


def test_two_dozen_steps_lower_the_loss(trained: Trained) -> None:
    assert trained.after < MAX_RATIO * trained.before, (trained.before, trained.after)


def _clip_input(trained: Trained) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    encoder = trained.run.ctx.encoder
    if trained.kind == "base":
        return torch.randn(3, encoder.embeds_width, generator=g)
    return torch.randn(3, tm.CLIP_IMAGE_SIZE // 14 * (tm.CLIP_IMAGE_SIZE // 14) + 1, encoder.hidden_width, generator=g)


def test_export_loads_through_the_pack_and_computes_the_same(trained: Trained) -> None:
    loaded = load_ip_adapter(trained.exported)
    spec, adapter = loaded.spec, trained.run.adapter
    layers = tm.ATTN2_LAYERS[trained.family]
    expected = ProjectionType.IMAGE_PROJ if trained.kind == "base" else ProjectionType.RESAMPLER
    assert (spec.projection, spec.kind, spec.num_layers, spec.custom_layout) == (expected, trained.kind, layers, False)
    assert spec.cross_attention_dim == tm.CROSS_DIM
    clip = _clip_input(trained)
    with torch.no_grad():
        tokens = adapter.image_proj_model(clip)
        assert torch.equal(loaded.project(clip), tokens)
        for index in adapter.adapter_modules.ip_indices:
            trained_kv = adapter.adapter_modules.project_kv(index, tokens)
            assert all(torch.equal(a, b) for a, b in zip(loaded.project_kv(index, tokens), trained_kv))


def test_training_really_changed_every_layer(trained: Trained) -> None:
    """The export is the trained state, not the initial copy of to_k / to_v."""
    unet_layers = [n for n in trained.run.ctx.base.unet.attn_processors if n.endswith("attn2.processor")]
    tensors = load_file(str(trained.exported))
    for n, name in enumerate(unet_layers):
        attn = trained.run.ctx.base.unet.get_submodule(name.removesuffix(".processor"))
        assert not torch.allclose(tensors[f"ip_adapter.{2 * n + 1}.to_k_ip.weight"], attn.to_k.weight.cpu())


def test_checkpoint_holds_the_same_adapter_and_converts_to_it(trained: Trained, tmp_path: Path) -> None:
    checkpoint = complete_checkpoints(trained.run.config.output_dir)[-1]
    assert checkpoint.name == f"checkpoint-{STEPS}"
    assert max_difference(checkpoint / ADAPTER_FILE, trained.exported) == 0
    keys = load_file(str(checkpoint / "model.safetensors")).keys()
    assert {k.split(".")[0] for k in keys} == {"image_proj_model", "adapter_modules"}  # the official training names
    convert_checkpoint(checkpoint, tmp_path / "converted.safetensors", "fp32")
    assert max_difference(tmp_path / "converted.safetensors", trained.exported) == 0


def _official_checkpoint(exported: Path, folder: Path, pickle: bool) -> Path:
    """What tutorial_train.py's accelerator.save_state writes: the whole wrapper, frozen UNet included."""
    tensors = load_file(str(exported))
    state = {"unet.conv_in.weight": torch.randn(8, 4, 3, 3), "unet.conv_in.bias": torch.randn(8)}
    state.update({k.replace("image_proj.", "image_proj_model.", 1).replace("ip_adapter.", "adapter_modules.", 1): v
                  for k, v in tensors.items()})
    folder.mkdir()
    if pickle:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("pickle", [False, True], ids=["model.safetensors", "pytorch_model.bin"])
def test_official_training_checkpoints_convert(folders, tmp_path: Path, pickle: bool) -> None:
    tensors = {f"image_proj.{k}": v for k, v in {"proj.weight": torch.randn(64, 8), "proj.bias": torch.randn(64),
                                                 "norm.weight": torch.randn(16), "norm.bias": torch.randn(16)}.items()}
    tensors.update({f"ip_adapter.{2 * n + 1}.to_{p}_ip.weight": torch.randn(8, 16) for n in range(16)
                    for p in "kv"})
    reference = tmp_path / "reference.safetensors"
    save_file(tensors, str(reference))
    checkpoint = _official_checkpoint(reference, tmp_path / "checkpoint-2000", pickle)
    spec = convert_checkpoint(checkpoint, tmp_path / "ip-adapter_custom.safetensors", "fp32")
    assert (spec.kind, spec.num_layers, spec.num_tokens) == ("base", 16, 4)
    assert max_difference(tmp_path / "ip-adapter_custom.safetensors", reference) == 0
    assert not any(k.startswith("unet.") for k in load_file(str(tmp_path / "ip-adapter_custom.safetensors")))
    half = convert_checkpoint(checkpoint, tmp_path / "half.safetensors")
    assert half == spec and {t.dtype for t in load_file(str(tmp_path / "half.safetensors")).values()} == {
        torch.float16}
