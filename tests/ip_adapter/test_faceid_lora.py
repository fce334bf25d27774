"""The FaceID LoRA key conversion equals diffusers' own (`_load_ip_adapter_loras`) on UNets with the real SD1.5 and
SDXL processor order, shares the file's tensors, and rejects keys that address no attention layer."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from ip_adapter import SD15_LAYOUT, SDXL_LAYOUT, CheckpointFormatError  # noqa: E402
from ip_adapter.faceid_lora import diffusers_lora, lora_base_names, processor_name  # noqa: E402
from tests.diffusers_reference import SD15_CONFIG, SDXL_CONFIG, tiny_unet  # noqa: E402

MODULES = ("to_q_lora", "to_k_lora", "to_v_lora", "to_out_lora")
#: (layout, diffusers config, attention processors = 2 x cross-attention layers)
CASES = {"sd15": (SD15_LAYOUT, SD15_CONFIG, 32), "sdxl": (SDXL_LAYOUT, SDXL_CONFIG, 140)}


def _file_lora(processors: int) -> dict[str, torch.Tensor]:
    """A LoRA group with a distinct scalar per key, so a mix-up of two keys cannot go unnoticed."""
    keys = [f"{i}.{m}.{h}.weight" for i in range(processors) for m in MODULES for h in ("down", "up")]
    return {key: torch.tensor(float(n)) for n, key in enumerate(keys)}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    layout, config, processors = CASES[request.param]
    return layout, tiny_unet(config), processors


def test_conversion_equals_diffusers(case) -> None:
    layout, unet, processors = case
    lora = _file_lora(processors)
    reference = unet._load_ip_adapter_loras([{"ip_adapter": lora}])[0]
    ours = diffusers_lora(lora, layout, "ip-adapter-faceid_tiny.bin")
    assert len(unet.attn_processors) == processors
    assert ours.keys() == reference.keys() and len(ours) == 8 * processors
    assert all(ours[k] is reference[k] for k in ours)  # the same tensor, not a copy


def test_processor_names_follow_diffusers_order(case) -> None:
    layout, unet, processors = case
    assert [processor_name(layout, i) for i in range(processors)] == list(unet.attn_processors)


def test_base_names_are_the_module_names_the_host_registers(case) -> None:
    layout, _, processors = case
    names = lora_base_names(diffusers_lora(_file_lora(processors), layout, "x.bin"))
    assert len(names) == 4 * processors
    first = "unet." + processor_name(layout, 0)
    assert {f"{first}.to_q", f"{first}.to_k", f"{first}.to_v", f"{first}.to_out"} <= names


@pytest.mark.parametrize("key", ["32.to_q_lora.down.weight", "3.to_x_lora.up.weight", "1.to_k_ip.weight"])
def test_keys_outside_the_layout_are_format_errors(key: str) -> None:
    with pytest.raises(CheckpointFormatError, match="ip-adapter-faceid_sd15.bin.*32 attention layers"):
        diffusers_lora({key: torch.zeros(1)}, SD15_LAYOUT, "ip-adapter-faceid_sd15.bin")
