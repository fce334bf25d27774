"""Image K/V: rows positive then negative, computed once per layer, device and dtype."""

from __future__ import annotations

import pytest
import torch

from ip_adapter import ImageKV, IPAdapter
from ip_adapter.checkpoint import CheckpointGroups
from tests.factories import image_proj_shapes, random_groups


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))

CROSS, EMBED, KV_TOKENS, LAYER_WIDTH = 8, 6, 4, 12
SD15_LAYERS = 16


def _small_adapter() -> IPAdapter:
    groups = random_groups(image_proj_shapes(CROSS, EMBED, KV_TOKENS), [LAYER_WIDTH] * SD15_LAYERS, CROSS)
    return IPAdapter.from_groups(CheckpointGroups("small.safetensors", groups["image_proj"], groups["ip_adapter"]))


def _count_calls(adapter: IPAdapter, index: int) -> list[int]:
    """Record every projection of layer `index` (the K/V matrix products)."""
    calls: list[int] = []
    inner = adapter.project_kv

    def counted(i: int, tokens: torch.Tensor, wanted: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if i == index:
            calls.append(1)
        return inner(i, tokens, wanted)

    adapter.project_kv = counted
    return calls


@pytest.fixture
def kv_setup() -> tuple[IPAdapter, ImageKV, torch.Tensor, torch.Tensor]:
    adapter = _small_adapter()
    positive, negative = _rand(1, KV_TOKENS, CROSS, seed=1), _rand(1, KV_TOKENS, CROSS, seed=2)
    return adapter, ImageKV(adapter, positive, negative), positive, negative


def test_image_kv_rows_are_positive_then_negative(kv_setup: tuple) -> None:
    adapter, kv, positive, negative = kv_setup
    k, v = kv.get(3, torch.device("cpu"), torch.float32)
    layer = adapter.layers["3"]
    for row, tokens in ((0, positive), (1, negative)):
        assert torch.allclose(k[row], tokens[0] @ layer["to_k_ip"].weight.T)
        assert torch.allclose(v[row], tokens[0] @ layer["to_v_ip"].weight.T)


def test_image_kv_computes_each_layer_once(kv_setup: tuple) -> None:
    adapter, kv, _, _ = kv_setup
    calls = _count_calls(adapter, 1)
    other = _count_calls(adapter, 5)
    first = kv.get(1, torch.device("cpu"), torch.float32)
    for _ in range(3):
        again = kv.get(1, "cpu", torch.float32)
        assert again[0] is first[0] and again[1] is first[1]
    assert (len(calls), len(other)) == (1, 0)
    kv.get(5, "cpu", torch.float32)
    assert (len(calls), len(other)) == (1, 1)


def test_image_kv_clear_forces_recomputation(kv_setup: tuple) -> None:
    adapter, kv, _, _ = kv_setup
    calls = _count_calls(adapter, 1)
    kv.get(1, "cpu", torch.float32)
    kv.clear()
    kv.get(1, "cpu", torch.float32)
    kv.get(1, "cpu", torch.float32)
    assert len(calls) == 2


def test_image_kv_keeps_one_entry_per_dtype(kv_setup: tuple) -> None:
    adapter, kv, _, _ = kv_setup
    calls = _count_calls(adapter, 1)
    k32, _ = kv.get(1, "cpu", torch.float32)
    k64, _ = kv.get(1, "cpu", torch.float64)
    kv.get(1, "cpu", torch.float64)
    assert (k32.dtype, k64.dtype, len(calls)) == (torch.float32, torch.float64, 2)
    assert (k64 - k32.double()).abs().max() <= 1e-5 * k64.abs().max()  # computed in float64 itself


def test_half_weights_on_the_cpu_are_projected_in_float32(kv_setup: tuple) -> None:
    """fp16 storage on the CPU (a fp16 UNet's offload copy): the math runs in float32 on the fp16 weights' values."""
    adapter, _, positive, negative = kv_setup
    half = _small_adapter().to(torch.float16)
    half.load_state_dict({k: v.half() for k, v in adapter.state_dict().items()})
    k, v = ImageKV(half, positive, negative).get(3, "cpu", torch.float32)
    weight = half.layers["3"]["to_k_ip"].weight.float()
    assert (k[0] - positive[0] @ weight.T).abs().max() <= 1e-6


def test_precomputed_tables_are_served_without_a_copy_or_a_projection(kv_setup) -> None:
    adapter, kv, _, _ = kv_setup
    expected = adapter.project_kv(3, kv.tokens, torch.float32)
    tables = kv.precompute([1, 3], torch.float32, "cpu")
    calls = _count_calls(adapter, 3)
    k, v = kv.get(3, torch.device("cpu"), torch.float32)
    assert k is tables.k["3"] and v is tables.v["3"] and not calls
    assert torch.equal(k, expected[0]) and torch.equal(v, expected[1])
    assert {name for name, _ in tables.named_parameters()} == {"k.1", "k.3", "v.1", "v.3"}
    assert not any(p.requires_grad for p in tables.parameters())


def test_another_dtype_is_cast_from_the_tables_and_a_missing_layer_is_computed(kv_setup) -> None:
    adapter, kv, _, _ = kv_setup
    tables = kv.precompute([3], torch.float32, "cpu")
    calls = _count_calls(adapter, 3)
    k, _ = kv.get(3, torch.device("cpu"), torch.float64)
    assert k.dtype == torch.float64 and torch.equal(k, tables.k["3"].double()) and not calls
    missing = _count_calls(adapter, 5)
    kv.get(5, torch.device("cpu"), torch.float32)
    assert missing == [1]
