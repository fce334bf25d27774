"""The patch under torch.compile, as ComfyUI's TorchCompileModel sets it up (the host's own compile wrapper around
the diffusion model): sampling runs, gives the eager result, the patch adds no graph break, and steps after the first
compile nothing new.

Measured with a counting backend (torch._dynamo.testing.CompileCounter, which runs the captured graphs eagerly): each
graph break or recompilation is one more captured frame. The unpatched model under the same wrapper is the baseline.
The host runs PyTorch's attention, its default on GPUs: its CPU default (sub-quadratic attention) asks psutil for free
memory inside every attention call, a graph break of the host's own that would split our frames too."""

from __future__ import annotations

import pytest
import torch

from tests.host.ipa_setup import PackNodes, adapter_groups, apply, reference_images, write_adapter

STEPS = 3
LATENT = 8
CFG = 4.0
SAME = 1e-5


@pytest.fixture(scope="module")
def setup(host_pack, tiny_sd15, tiny_clip_vision, host_models):
    nodes = PackNodes.of(host_pack)
    groups = adapter_groups("plus", tiny_sd15, tiny_clip_vision, seed=5)
    adapter = nodes.load.load(write_adapter(host_models, groups, "compile-plus_sd15.safetensors"))[0]
    with torch.inference_mode():
        prompt = nodes.encode.encode(tiny_clip_vision.host, reference_images(2), "center")[0]
    return nodes, adapter, prompt, tiny_sd15


def _sample(model, unet) -> torch.Tensor:
    import comfy.sample

    from tests.host.predict import random_text_cond

    positive, negative = (random_text_cond(unet.kind, seed=s).comfy() for s in (40, 41))
    noise = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, STEPS, CFG, "euler", "normal", positive, negative,
                                   torch.zeros(1, 4, LATENT, LATENT), seed=0, disable_pbar=True)


def _compiled(model):
    """The model as TorchCompileModel leaves it, with a counting backend instead of inductor."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    m = model.clone()
    set_torch_compile_wrapper(m, backend=counter)
    return m, counter


@pytest.fixture
def pytorch_attention(comfy_host, monkeypatch):
    import comfy.ldm.modules.attention as attention

    for name in ("optimized_attention", "optimized_attention_masked"):
        monkeypatch.setattr(attention, name, attention.attention_pytorch)


def test_compiled_sampling_matches_eager_without_breaks_or_recompiles(setup, pytorch_attention) -> None:
    nodes, adapter, prompt, unet = setup
    baseline, base_counter = _compiled(unet.patcher)
    _sample(baseline, unet)
    patched = apply(nodes, unet.patcher, adapter, prompt, weight=0.8, start_at=0.0, end_at=0.6)
    eager = _sample(patched, unet)
    compiled, counter = _compiled(patched)
    out = _sample(compiled, unet)
    assert counter.frame_count == base_counter.frame_count, (counter.frame_count, base_counter.frame_count)
    torch.testing.assert_close(out, eager, rtol=SAME, atol=SAME)
