"""The attn2 patch object called the way the host calls it: row selection for every cond_or_uncond form, the host's
attention with its precision and override hooks, dtype casting, and coexistence with other packs' patches."""

from __future__ import annotations

import pytest
import torch

from tests.host.ipa_setup import PackNodes, adapter_groups, apply, reference_images, write_adapter
from tests.numerics import assert_relative_close

HEADS, TOKENS, QUERIES = 8, 77, 64
LOW_PRECISION = {torch.float16: 2e-2, torch.bfloat16: 5e-2}


@pytest.fixture(scope="module")
def patched(host_pack, tiny_sd15, tiny_clip_vision, host_models):
    nodes = PackNodes.of(host_pack)
    groups = adapter_groups("base", tiny_sd15, tiny_clip_vision, seed=3)
    adapter = nodes.load.load(write_adapter(host_models, groups, "patch-base_sd15.safetensors"))[0]
    with torch.inference_mode():
        prompt = nodes.encode.encode(tiny_clip_vision.host, reference_images(1), "center")[0]
    model = apply(nodes, tiny_sd15.patcher, adapter, prompt, 0.7)
    key = ("input", 1, 0)
    nodes.loaded = adapter
    return model, model.model_options["transformer_options"]["patches_replace"]["attn2"][key], nodes


def _qkv(rows: int, width: int = 320, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, n, width, generator=g).to(dtype) for n in (QUERIES, TOKENS, TOKENS)]


def _extra(chunks, sigma: float = 1.0, rows_per_chunk: int = 1) -> dict:
    return {"n_heads": HEADS, "attn_precision": None, "cond_or_uncond": chunks,
            "sigmas": torch.full((rows_per_chunk,), sigma), "original_shape": [rows_per_chunk, 4, 8, 8]}


def _image_term(patch, q, extra):
    from comfy.ldm.modules.attention import optimized_attention

    k, v = torch.zeros(q.shape[0], TOKENS, q.shape[-1]), torch.zeros(q.shape[0], TOKENS, q.shape[-1])
    zero_text = optimized_attention(q, k, v, HEADS)
    with torch.inference_mode():
        return patch(q, k, v, extra) - zero_text


@pytest.mark.parametrize("chunks", [[1, 0], [0], [1], [1, 0, 0], [0, 1, 2]])
def test_rows_follow_cond_or_uncond(patched, chunks):
    _, patch, _ = patched
    q = _qkv(1)[0].repeat(len(chunks), 1, 1)
    term = _image_term(patch, q, _extra(chunks))
    positive = _image_term(patch, q[:1], _extra([0]))
    negative = _image_term(patch, q[:1], _extra([1]))
    assert (positive - negative).abs().max() > 1e-2
    for row, chunk in enumerate(chunks):
        expected = negative if chunk == 1 else positive
        assert_relative_close(term[row], expected[0])


def test_host_attention_gets_precision_and_transformer_options(patched, monkeypatch):
    import comfy.ldm.modules.attention as attention

    _, patch, _ = patched
    calls, real = [], attention.optimized_attention

    def spy(q, k, v, heads, **kwargs):
        calls.append(kwargs)
        return real(q, k, v, heads, **kwargs)

    monkeypatch.setattr(attention, "optimized_attention", spy)
    extra = dict(_extra([1, 0]), attn_precision=torch.float32)
    with torch.inference_mode():
        patch(*_qkv(2), extra)
    assert len(calls) == 2  # text once, image once
    assert all(c["attn_precision"] is torch.float32 and c["transformer_options"] is extra for c in calls)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_queries_are_served_in_their_dtype(patched, dtype):
    _, patch, _ = patched
    q, k, v = _qkv(2)
    with torch.inference_mode():
        reference = patch(q, k, v, _extra([1, 0]))
        low = patch(q.to(dtype), k.to(dtype), v.to(dtype), _extra([1, 0]))
    assert low.dtype == dtype
    assert (low.float() - reference).abs().max() <= LOW_PRECISION[dtype]


def test_storage_dtype_hooks_never_cast_the_adapter(patched):
    _, patch, _ = patched
    adapter = patch.entries[0].adapter
    for dtype in (torch.float16, torch.bfloat16, torch.float8_e4m3fn):
        assert patch.to(dtype) is patch
    assert patch.to(torch.device("cpu")) is patch
    assert adapter.dtype == torch.float32


def test_a_foreign_patch_is_kept_as_the_base_attention(host_pack, patched, tiny_sd15, tiny_clip_vision):
    model, _, nodes = patched
    seen = []

    def foreign(q, k, v, extra):
        seen.append(q.shape)
        return torch.zeros_like(q)

    other = tiny_sd15.patcher.clone()
    other.set_model_attn2_replace(foreign, "input", 1)  # another pack, 2-tuple key
    with torch.inference_mode():
        prompt = nodes.encode.encode(tiny_clip_vision.host, reference_images(1), "center")[0]
    both = apply(nodes, other, nodes.loaded, prompt, 0.7)
    patch = both.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    assert patch.base is foreign
    q = _qkv(1)[0]
    with torch.inference_mode():
        out = patch(q, torch.zeros(1, TOKENS, 320), torch.zeros(1, TOKENS, 320), _extra([0]))
    assert seen
    assert_relative_close(out, _image_term(patched[1], q, _extra([0])))


def test_attn1_patches_of_other_packs_coexist(patched, tiny_sd15):
    from tests.host.ipa_setup import SIGMA, latent, text_conds
    from tests.host.predict import host_eps

    model, _, _ = patched
    calls = []

    def attn1_patch(n, context, value, extra):
        calls.append(1)
        return n, context, value

    both = model.clone()
    both.set_model_attn1_patch(attn1_patch)
    cond, uncond = text_conds(tiny_sd15)
    a = torch.cat(host_eps(both, latent(), SIGMA, cond, uncond))
    b = torch.cat(host_eps(model, latent(), SIGMA, cond, uncond))
    plain = torch.cat(host_eps(tiny_sd15.patcher, latent(), SIGMA, cond, uncond))
    assert calls and (a - b).abs().max() <= 1e-6 and (a - plain).abs().max() > 1e-2


def test_window_follows_the_sigma_of_each_step(host_pack, tiny_sd15, tiny_clip_vision, patched):
    model, full_patch, nodes = patched
    sampling = tiny_sd15.patcher.get_model_object("model_sampling")
    late = apply(nodes, tiny_sd15.patcher, nodes.loaded, _prompt_of(nodes, tiny_clip_vision), 0.7, start_at=0.5)
    patch = late.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    q = _qkv(1)[0]
    early_sigma, late_sigma = float(sampling.percent_to_sigma(0.2)), float(sampling.percent_to_sigma(0.8))
    for sigma, on in ((early_sigma, False), (late_sigma, True), (early_sigma, False)):
        term = _image_term(patch, q, _extra([0], sigma=sigma))
        assert (term.abs().max() > 1e-3) == on, sigma


def _prompt_of(nodes, clip):
    with torch.inference_mode():
        return nodes.encode.encode(clip.host, reference_images(1), "center")[0]
