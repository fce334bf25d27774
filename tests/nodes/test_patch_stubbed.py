"""The attn2 patch's logic without a host, so CI (which has no ComfyUI) still covers it: the host modules it imports
are stubbed through sys.modules (the host's own tests-unit pattern) and its attention is the core's SDPA reference.
The same behaviour is checked inside a real ComfyUI in tests/host/test_patch.py."""

from __future__ import annotations

import copy
import importlib
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ip_adapter import IPAdapter, sdpa_attention
from ip_adapter.checkpoint import CheckpointGroups
from ip_adapter.layout import SD15_LAYOUT
from tests.factories import image_proj_shapes, random_groups

PACK = "ipa_stubbed_pack"
ROOT = Path(__file__).resolve().parents[2]
CROSS, EMBED, WIDTH, HEADS, TOKENS, QUERIES = 16, 12, 32, 4, 5, 9
INDEX = 1
IN_WINDOW, OUT_OF_WINDOW = 5.0, 50.0
SIGMA_START, SIGMA_END = 10.0, 1.0
TOLERANCE = 1e-6


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _reference_attention(q, k, v, heads, **host_options):
    return sdpa_attention(q, k, v, heads)


@pytest.fixture
def patch_module(monkeypatch):
    """`nodes.patch` imported under a throw-away package name with comfy stubbed; removed afterwards."""
    stubs = {
        "comfy": _stub("comfy"),
        "comfy.ldm": _stub("comfy.ldm"),
        "comfy.ldm.modules": _stub("comfy.ldm.modules"),
        "comfy.ldm.modules.attention": _stub("comfy.ldm.modules.attention", optimized_attention=_reference_attention),
        "comfy.model_management": _stub("comfy.model_management"),
        "comfy.model_patcher": _stub("comfy.model_patcher", ModelPatcher=object),
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name, path in ((PACK, ROOT), (f"{PACK}.nodes", ROOT / "nodes")):
        package = _stub(name)
        package.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, name, package)
    yield importlib.import_module(f"{PACK}.nodes.patch")
    for name in [n for n in sys.modules if n.startswith(PACK)]:
        del sys.modules[name]


def _adapter(core) -> IPAdapter:
    widths = [WIDTH] * SD15_LAYOUT.num_layers
    groups = random_groups(image_proj_shapes(CROSS, EMBED, TOKENS), widths, CROSS, seed=2)
    return core.IPAdapter.from_groups(CheckpointGroups("stub.safetensors", groups["image_proj"], groups["ip_adapter"]))


def _entry(module, swap: bool = False, weight: float = 0.5):
    core = sys.modules[f"{PACK}.ip_adapter"]
    rule_cls = sys.modules[f"{PACK}.ip_adapter.weight_types"].LayerRule
    adapter = _adapter(core)
    g = torch.Generator().manual_seed(0)
    tokens = [adapter.project(torch.randn(1, EMBED, generator=g)) for _ in range(2)]
    kv = core.ImageKV(adapter, tokens[0], tokens[1])
    loaded = SimpleNamespace(adapter=adapter, patcher="adapter-patcher")
    return module.AdapterEntry(loaded, kv, {INDEX: rule_cls(1.0, swap)}, weight, SIGMA_START, SIGMA_END, "V only",
                               None), adapter, tokens


def _call(patch, chunks, sigma=IN_WINDOW):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(len(chunks), n, WIDTH, generator=g) for n in (QUERIES, TOKENS, TOKENS))
    extra = {"n_heads": HEADS, "cond_or_uncond": chunks, "sigmas": torch.tensor([sigma])}
    return q, k, v, patch(q, k, v, extra)


def _image_branch(adapter, q, tokens):
    k, v = adapter.project_kv(INDEX, tokens)
    return sdpa_attention(q, k.expand(q.shape[0], -1, -1), v.expand(q.shape[0], -1, -1), HEADS)


def test_rows_get_their_tokens_and_the_weight(patch_module):
    entry, adapter, (pos, neg) = _entry(patch_module)
    q, k, v, out = _call(patch_module.IPAdapterAttn2Patch(INDEX, (entry,)), [1, 0, 0])
    text = sdpa_attention(q, k, v, HEADS)
    for row, tokens in enumerate((neg, pos, pos)):
        expected = text[row] + entry.weight * _image_branch(adapter, q[row:row + 1], tokens)[0]
        assert (out[row] - expected).abs().max() <= TOLERANCE


def test_outside_the_window_the_text_attention_is_returned_unchanged(patch_module):
    entry, _, _ = _entry(patch_module)
    q, k, v, out = _call(patch_module.IPAdapterAttn2Patch(INDEX, (entry,)), [1, 0], sigma=OUT_OF_WINDOW)
    assert torch.equal(out, sdpa_attention(q, k, v, HEADS))


def test_precise_layers_give_uncond_rows_the_reference_and_cond_rows_nothing(patch_module):
    entry, adapter, (pos, _) = _entry(patch_module, swap=True)
    q, k, v, out = _call(patch_module.IPAdapterAttn2Patch(INDEX, (entry,)), [1, 0])
    text = sdpa_attention(q, k, v, HEADS)
    assert (out[0] - text[0] - entry.weight * _image_branch(adapter, q[:1], pos)[0]).abs().max() <= TOLERANCE
    assert (out[1] - text[1]).abs().max() <= TOLERANCE


def test_copies_share_and_stacking_builds_a_new_patch(patch_module):
    first, _, _ = _entry(patch_module)
    second, _, _ = _entry(patch_module, weight=0.25)
    patch = patch_module.IPAdapterAttn2Patch(INDEX, (first,))
    assert copy.deepcopy({"p": patch})["p"] is patch
    stacked = patch.stacked(second)
    assert stacked is not patch and patch.entries == (first,) and stacked.entries == (first, second)
    assert patch.to(torch.float16) is patch and stacked.models() == ["adapter-patcher", "adapter-patcher"]
