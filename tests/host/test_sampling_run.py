"""What a sampling run decides, proven inside real sampling: each row's image follows the conditioning it came
from under every guider (CFG, DualCFGGuider, PerpNegGuider, Self-Attention Guidance, a CFG++ sampler); start/end
follow the model sampling in force when sampling starts, wherever its patch sits in the chain; foreign attn2 patches
registered after ours, under either key form, keep working with ours.

Instrumentation: the pack's RunPlan.term is wrapped to record, for every patched layer call, the sampler's chunk
uuids and which row of the entry's [reference, negative] K table each batch row received; an extra OUTER_SAMPLE
wrapper records the guider's named conditionings (uuid -> name)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from tests.host.ipa_setup import PackNodes, adapter_groups, apply, reference_images, write_adapter

STEPS = 3
LATENT = 8
SAG_LATENT = 16  # SAG factors the middle block's attention map: it needs a grid larger than 1x1 there
P, N = 0, 1  # table rows: reference image, negative image


@dataclass
class Record:
    names: dict = field(default_factory=dict)  # uuid -> conditioning name, per run
    rows: list = field(default_factory=list)  # (uuids, cond_or_uncond, [table row per batch row]) per layer call
    sigmas: list = field(default_factory=list)  # (sigma, active) per layer call


@pytest.fixture(scope="module")
def setup(host_pack, tiny_sd15, tiny_clip_vision, host_models):
    nodes = PackNodes.of(host_pack)
    groups = adapter_groups("base", tiny_sd15, tiny_clip_vision, seed=21)
    adapter = nodes.load.load(write_adapter(host_models, groups, "run-base_sd15.safetensors"))[0]
    with torch.inference_mode():
        prompt = nodes.encode.encode(tiny_clip_vision.host, reference_images(1), "center",
                                     reference_images(1, seed=8))[0]  # a negative image: both tables differ
    return nodes, adapter, prompt, tiny_sd15


@pytest.fixture
def record(host_pack, monkeypatch) -> Record:
    import comfy.patcher_extension

    rec = Record()
    plan_cls = host_pack.module.ip_adapter.run_plan.RunPlan
    original = plan_cls.term

    def recording_term(self, index, entry, rule, q, extra):
        term = original(self, index, entry, rule, q, extra)
        sigma = self.sigma(extra)
        rec.sigmas.append((sigma, term is not None))
        if term is not None:
            table = entry.table(index, rule, q.device, q.dtype)
            got = [P if torch.equal(k, table.k[P]) else N if torch.equal(k, table.k[N]) else None for k in term.k]
            rec.rows.append((list(extra.get("uuids") or []), list(extra["cond_or_uncond"]), got))
        return term

    monkeypatch.setattr(plan_cls, "term", recording_term)

    def names_wrapper(executor, *args, **kwargs):
        conds = executor.class_obj.conds
        rec.names.update({c["uuid"]: name for name, entries in conds.items() for c in entries})
        return executor(*args, **kwargs)

    rec.wrapper = (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "test_record_names", names_wrapper)
    return rec


def _with_recorder(model, rec: Record):
    m = model.clone()
    m.add_wrapper_with_key(*rec.wrapper)
    return m


def _conds(unet, n: int):
    from tests.host.predict import random_text_cond

    return [random_text_cond(unet.kind, seed=30 + i).comfy() for i in range(n)]


def _noise(seed: int = 0, size: int = LATENT) -> torch.Tensor:
    return torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))


def _ksample(model, positive, negative, sampler: str = "euler", cfg: float = 4.0, size: int = LATENT):
    import comfy.sample

    with torch.inference_mode():
        return comfy.sample.sample(model, _noise(size=size), STEPS, cfg, sampler, "normal", positive, negative,
                                   torch.zeros(1, 4, size, size), seed=0, disable_pbar=True)


def _guided_sample(guider, model):
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
    with torch.inference_mode():
        return guider.sample(_noise(), torch.zeros(1, 4, LATENT, LATENT), comfy.samplers.sampler_object("euler"),
                             sigmas, seed=0, disable_pbar=True)


def _assert_rows_follow_names(rec: Record, expected_names: set[str]) -> None:
    assert rec.rows, "the patch was never called"
    seen = set()
    for uuids, chunks, got in rec.rows:
        assert len(uuids) == len(chunks) and None not in got
        per_chunk = len(got) // len(chunks)
        for row, table_row in enumerate(got):
            name = rec.names[uuids[row // per_chunk]]
            seen.add(name)
            assert table_row == (N if "negative" in name else P), (name, chunks, got)
    assert seen == expected_names


def test_cfg(setup, record):
    nodes, adapter, prompt, unet = setup
    positive, negative = _conds(unet, 2)
    _ksample(_with_recorder(apply(nodes, unet.patcher, adapter, prompt), record), positive, negative)
    _assert_rows_follow_names(record, {"positive", "negative"})


def test_cfg_pp_sampler(setup, record):
    nodes, adapter, prompt, unet = setup
    positive, negative = _conds(unet, 2)
    _ksample(_with_recorder(apply(nodes, unet.patcher, adapter, prompt), record), positive, negative,
             sampler="euler_cfg_pp", cfg=1.5)
    _assert_rows_follow_names(record, {"positive", "negative"})


def test_dual_cfg_guider(setup, record):
    """[negative, middle, positive] arrives as cond_or_uncond [0, 1, 2]; by index the negative row would get the
    reference image. Rule: only conditionings named negative get the negative image (middle gets the reference)."""
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    nodes, adapter, prompt, unet = setup
    model = _with_recorder(apply(nodes, unet.patcher, adapter, prompt), record)
    guider = Guider_DualCFG(model)
    positive, middle, negative = _conds(unet, 3)
    guider.set_conds(positive, middle, negative)
    guider.set_cfg(3.0, 2.0)
    _guided_sample(guider, model)
    _assert_rows_follow_names(record, {"positive", "middle", "negative"})
    # The index rule would have failed here: the negative conditioning's chunks carry index 0, the middle's 1.
    assert any(record.names[u] == "negative" and c == 0 for uuids, chunks, _ in record.rows
               for u, c in zip(uuids, chunks))
    assert any(record.names[u] == "middle" and c == 1 for uuids, chunks, _ in record.rows
               for u, c in zip(uuids, chunks))


def test_perp_neg_guider(setup, record):
    from comfy_extras.nodes_perpneg import Guider_PerpNeg

    nodes, adapter, prompt, unet = setup
    model = _with_recorder(apply(nodes, unet.patcher, adapter, prompt), record)
    guider = Guider_PerpNeg(model)
    positive, negative, empty = _conds(unet, 3)
    guider.set_conds(positive, negative, empty)
    guider.set_cfg(4.0, 1.0)
    _guided_sample(guider, model)
    _assert_rows_follow_names(record, {"positive", "negative", "empty_negative_prompt"})


def test_self_attention_guidance_reruns_the_uncond_alone(setup, record):
    """SAG re-runs the unconditional as a batch of its own (cond_or_uncond [0]): it must still see the negative."""
    from comfy_extras.nodes_sag import SelfAttentionGuidance

    nodes, adapter, prompt, unet = setup
    out = SelfAttentionGuidance.execute(apply(nodes, unet.patcher, adapter, prompt), 0.5, 2.0)
    model = _with_recorder(out.result[0] if hasattr(out, "result") else out[0], record)
    positive, negative = _conds(unet, 2)
    _ksample(model, positive, negative, size=SAG_LATENT)
    _assert_rows_follow_names(record, {"positive", "negative"})
    assert any(chunks == [0] and all(r == N for r in got) for _, chunks, got in record.rows)


# --- start/end follow the model sampling in force when sampling starts ---------------------------------------------

START, END = 0.3, 0.7


def _sampling_patches():
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete, ModelSamplingSD3

    return {
        "v-prediction-zsnr": lambda m: ModelSamplingDiscrete().patch(m, "v_prediction", True)[0],
        "sd3-shift": lambda m: ModelSamplingSD3().patch(m, 3.0)[0],
    }


@pytest.mark.parametrize("name", ["v-prediction-zsnr", "sd3-shift"])
def test_window_is_the_same_with_the_sampling_patch_before_or_after_apply(setup, record, name):
    nodes, adapter, prompt, unet = setup
    patch = _sampling_patches()[name]
    positive, negative = _conds(unet, 2)
    active = {}
    for order in ("before", "after"):
        record.sigmas.clear()
        if order == "before":
            model = apply(nodes, patch(unet.patcher), adapter, prompt, start_at=START, end_at=END)
        else:
            model = patch(apply(nodes, unet.patcher, adapter, prompt, start_at=START, end_at=END))
        _ksample(model, positive, negative, cfg=1.0)
        active[order] = sorted({(round(s, 5), on) for s, on in record.sigmas})
        sampling = model.get_model_object("model_sampling")
        lo, hi = float(sampling.percent_to_sigma(END)), float(sampling.percent_to_sigma(START))
        assert all(on == (lo <= s <= hi) for s, on in record.sigmas)
    assert active["before"] == active["after"]
    assert {on for _, on in active["after"]} == {True, False}  # the window cuts the schedule


# --- foreign attn2 patches registered after ours -------------------------------------------------------------------

@pytest.mark.parametrize("key", [("input", 1), ("input", 1, 0)], ids=["2-tuple", "3-tuple"])
@pytest.mark.parametrize("order", ["foreign-first", "ours-first"])
def test_a_foreign_patch_and_ours_both_run(setup, record, key, order):
    nodes, adapter, prompt, unet = setup
    calls = []

    def foreign(q, k, v, extra):
        calls.append(q.shape[0])
        import comfy.ldm.modules.attention as attention

        return attention.optimized_attention(q, k, v, extra["n_heads"])

    if order == "foreign-first":
        base = unet.patcher.clone()
        base.set_model_attn2_replace(foreign, *key)
        model = apply(nodes, base, adapter, prompt)
    else:
        model = apply(nodes, unet.patcher, adapter, prompt).clone()
        model.set_model_attn2_replace(foreign, *key)
    positive, negative = _conds(unet, 2)
    _ksample(model, positive, negative)
    assert len(calls) == STEPS  # the foreign patch ran at its layer on every step
    assert len(record.rows) == STEPS * 16  # and ours on all 16 layers, that one included
