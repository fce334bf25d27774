"""Regional prompts: two references, each confined to its mask (attn_mask), text conditioning masked to the same
regions (the host's ConditioningSetMask).

At every patched layer of a real sampling call, a probe evaluates the very patch the host calls, on the same q/k/v,
with and without each adapter: the difference is that adapter's contribution. It must be exactly zero at every query
outside the adapter's mask and non-zero inside, judged two ways: against the mask the pack resizes to the layer's
grid, and against the geometry (cells whose pixels all lie outside / inside the mask). Masks of several sizes and
aspect ratios are used, at pixel and at latent resolution, on even and odd latents, on SD1.5 (every grid of its UNet:
the latent, /2, /4 and the 1x1 middle; the masking code is the same for SDXL). An end-to-end check then shows the
effect of one reference concentrated in its region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from tests.host.ipa_setup import SIGMA, PackNodes, adapter_groups, apply, reference_images, write_adapter
from tests.host.predict import TextCond, host_eps, random_text_cond
from tests.host.tiny_models import SD15

PIXELS_PER_LATENT = 8
WEIGHTS = (1.0, 0.7)
#: End to end, the mean change a reference causes inside its region must exceed the mean change outside it by this.
CONCENTRATION = 2.0


def _rect(h: int, w: int, top: float, left: float, bottom: float, right: float) -> torch.Tensor:
    mask = torch.zeros(h, w)
    mask[round(top * h):round(bottom * h), round(left * w):round(right * w)] = 1.0
    return mask


def _disc(h: int, w: int, cy: float, cx: float, radius: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return (((y - cy * h) / h) ** 2 + ((x - cx * w) / w) ** 2 <= radius**2).float()


@dataclass(frozen=True)
class Case:
    """A latent size and two masks; `latent_res` marks masks given at latent rather than pixel resolution."""

    name: str
    latent: tuple[int, int]
    masks: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
    latent_res: tuple[bool, bool] = (False, False)
    kind: str = SD15

    def mask_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        lh, lw = self.latent
        pairs = []
        for i, at_latent in enumerate(self.latent_res):
            scale = 1 if at_latent else PIXELS_PER_LATENT
            pairs.append(self.masks(lh * scale, lw * scale)[i])
        return pairs[0], pairs[1]


CASES = [
    Case("square-halves", (8, 8), lambda h, w: (_rect(h, w, 0, 0, 1, .5), _rect(h, w, 0, .5, 1, 1))),
    Case("wide-boxes", (6, 10), lambda h, w: (_rect(h, w, 0, 0, .5, .4), _rect(h, w, .5, .4, 1, 1))),
    Case("odd-latent-mixed-resolution", (7, 5), lambda h, w: (_rect(h, w, 0, 0, 3 / 7, 1), _rect(h, w, .4, .2, 1, .8)),
         latent_res=(False, True)),
    Case("tall-discs", (11, 7), lambda h, w: (_disc(h, w, .3, .4, .25), _disc(h, w, .75, .6, .2))),
]


@dataclass
class LayerRecord:
    key: tuple
    grid: tuple[int, int]
    latent: tuple[int, int]
    contributions: list[torch.Tensor]  # per adapter, oldest first: (B, Nq, C)


class ContributionProbe:
    """A foreign attn2 patch registered before the adapters, so the pack's patch at each key calls it for the text
    attention with exactly its own q/k/v/extra. It rebuilds that patch with all and with all-but-one contribution and
    records the differences; it returns the host's text attention, so the model output is unchanged."""

    def __init__(self, registry_key: str) -> None:
        self.registry_key = registry_key
        self.records: list[LayerRecord] = []

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        from comfy.ldm.modules.attention import optimized_attention

        key = (extra["block"][0], extra["block"][1], extra["block_index"])
        patch = extra.get(self.registry_key, {}).get(("attn2", key))
        if patch is not None:
            every = patch.contributions

            def run(contributions):
                return type(patch)(patch.index, contributions, patch.attention)(q, k, v, extra)

            full = run(every)
            differences = [full - run(every[:i] + every[i + 1:]) for i in range(len(every))]
            self.records.append(LayerRecord(key, tuple(extra["activations_shape"][-2:]),
                                            tuple(extra["original_shape"][-2:]), differences))
        return optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"),
                                   transformer_options=extra)

    def __deepcopy__(self, memo: dict) -> ContributionProbe:
        return self


def _geometry(mask: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(outside, inside) per query of a grid over `mask`: every pixel a cell touches is 0 / is 1."""
    (h, w), (gh, gw) = mask.shape, grid
    outside, inside = torch.zeros(gh, gw, dtype=torch.bool), torch.zeros(gh, gw, dtype=torch.bool)
    for i in range(gh):
        for j in range(gw):
            rows = slice(int(i * h / gh), -(-(i + 1) * h // gh))
            cols = slice(int(j * w / gw), -(-(j + 1) * w // gw))
            block = mask[rows, cols]
            outside[i, j], inside[i, j] = bool((block == 0).all()), bool((block == 1).all())
    return outside.flatten(), inside.flatten()


@pytest.fixture(scope="module")
def nodes(host_pack) -> PackNodes:
    return PackNodes.of(host_pack)


def _masked(cond: TextCond, mask: torch.Tensor) -> list:
    import nodes as host_nodes

    return host_nodes.ConditioningSetMask().append(cond.comfy(), mask, "default", 1.0)[0]


def _regional_conds(kind: str, masks: tuple[torch.Tensor, torch.Tensor]) -> tuple[list, list]:
    """Two prompts, each masked to its reference's region, plus a global one; and a negative."""
    regional = [_masked(random_text_cond(kind, seed=10 + i), m) for i, m in enumerate(masks)]
    positive = random_text_cond(kind, seed=12).comfy() + regional[0] + regional[1]
    return positive, random_text_cond(kind, seed=13).comfy()


def _regional_model(nodes, unet, adapter, prompts, masks, base=None):
    model = base if base is not None else unet.patcher
    for prompt, mask, weight in zip(prompts, masks, WEIGHTS):
        model = apply(nodes, model, adapter, prompt, weight, attn_mask=mask)
    return model


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_reference_acts_exactly_inside_its_mask_at_every_layer(case, request, host_pack, nodes, host_models,
                                                                     tiny_clip_vision) -> None:
    from ip_adapter.layout import LAYOUTS
    from ip_adapter.masks import mask_for_queries
    from tests.host.ipa_setup import FAMILY

    unet = request.getfixturevalue(f"tiny_{case.kind}")
    adapter = nodes.load.load(write_adapter(host_models, adapter_groups("base", unet, tiny_clip_vision, seed=3),
                                            f"regional-base_{unet.kind}.safetensors"))[0]
    with torch.inference_mode():
        prompts = [nodes.encode.encode(tiny_clip_vision.host, reference_images(1, s), "center")[0] for s in (1, 2)]
    masks = case.mask_pair()
    probe = ContributionProbe(host_pack.module.nodes.patch.REGISTRY_KEY)
    base = unet.patcher.clone()
    for name, number in [(b, i) for b in ("input", "output") for i in range(12)] + [("middle", 0)]:
        base.set_model_attn2_replace(probe, name, number)
    model = _regional_model(nodes, unet, adapter, prompts, masks, base)
    positive, negative = _regional_conds(case.kind, masks)
    x = torch.randn(1, 4, *case.latent, generator=torch.Generator().manual_seed(5))
    host_eps(model, x, SIGMA, positive, negative)

    assert len({r.key for r in probe.records}) == LAYOUTS[FAMILY[unet.kind]].num_layers  # every patched layer
    checked = {"inside": 0, "outside": 0}
    for record in probe.records:
        num_queries = record.grid[0] * record.grid[1]
        for mask, difference in zip(masks, record.contributions):
            assert difference.shape[1] == num_queries and record.latent == case.latent
            size = difference.abs().amax(dim=(0, 2))
            resized = mask_for_queries(mask[None], num_queries, record.latent)[0, :, 0]
            assert (size[resized == 0] == 0).all(), (record.key, record.grid)
            assert (size[resized > 0] > 0).all(), (record.key, record.grid)
            outside, inside = _geometry(mask, record.grid)
            assert (size[outside] == 0).all() and (size[inside] > 0).all(), (record.key, record.grid)
            checked["outside"] += int(outside.sum())
            checked["inside"] += int(inside.sum())
    assert checked["outside"] > 0 and checked["inside"] > 0


def test_end_to_end_a_reference_changes_mostly_its_region(host_pack, nodes, host_models, tiny_sd15,
                                                          tiny_clip_vision) -> None:
    import torch.nn.functional as F

    adapter = nodes.load.load(write_adapter(host_models, adapter_groups("base", tiny_sd15, tiny_clip_vision, seed=3),
                                            "regional-base_sd15.safetensors"))[0]
    with torch.inference_mode():
        prompts = [nodes.encode.encode(tiny_clip_vision.host, reference_images(1, s), "center")[0] for s in (1, 2)]
    latent = (8, 12)
    masks = tuple(CASES[1].masks(latent[0] * PIXELS_PER_LATENT, latent[1] * PIXELS_PER_LATENT))
    positive, negative = _regional_conds(SD15, masks)
    x = torch.randn(1, 4, *latent, generator=torch.Generator().manual_seed(6))
    both = host_eps(_regional_model(nodes, tiny_sd15, adapter, prompts, masks), x, SIGMA, positive, negative)[0]
    only_b = apply(nodes, tiny_sd15.patcher, adapter, prompts[1], WEIGHTS[1], attn_mask=masks[1])
    without_a = host_eps(only_b, x, SIGMA, positive, negative)[0]
    change = (both - without_a).abs().mean(dim=1)[0]
    region = F.interpolate(masks[0][None, None], size=latent, mode="area")[0, 0]
    inside, outside = change[region == 1].mean(), change[region == 0].mean()
    assert inside > 1e-3 and inside > CONCENTRATION * outside, (float(inside), float(outside))
