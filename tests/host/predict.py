"""Noise predictions from the host, through the sampler's own path, and from the diffusers twin with equivalent inputs.

Host path: a `CFGGuider` runs its real `sample()` (hook registration, `prepare_sampling` → `load_models_gpu` with the
patches' `.to()` / `.models()`, conds processed into `c_crossattn` / SDXL `y`, `sample_sigmas`) with a probe sampler
that calls `comfy.samplers.calc_cond_batch` once, as `sampling_function` does, so attn2 replace patches see the
per-step `transformer_options` (`cond_or_uncond`, `sigmas`, `uuids`, `sample_sigmas`, wrappers, callbacks).
Everything runs under `torch.inference_mode()`, like the host's executor.

Input scaling (ComfyUI `model_sampling`, EPS models): the UNet gets `x / sqrt(sigma² + 1)` at timestep
`model_sampling.timestep(sigma)` (nearest of the 1000 training steps) and the host returns `denoised = x - eps·sigma`;
`host_eps` turns that back into eps, which is what the diffusers twin predicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Conditioning = list  # ComfyUI CONDITIONING: [[cross_attn tensor, {extra keys}], ...]


@dataclass(frozen=True)
class TextCond:
    """One text conditioning for both frameworks.

    Attributes:
        context: token embeddings. Shape: (batch, tokens, 768 | 2048).
        pooled: SDXL pooled text embedding. Shape: (batch, 1280); None for SD1.5.
        width, height, crop_w, crop_h, target_width, target_height: SDXL size conditioning (pixels); targets default
            to width/height, as in the host's `SDXL.encode_adm`.
    """

    context: torch.Tensor
    pooled: torch.Tensor | None = None
    width: int = 1024
    height: int = 1024
    crop_w: int = 0
    crop_h: int = 0
    target_width: int | None = None
    target_height: int | None = None

    def comfy(self) -> Conditioning:
        """As a host CONDITIONING list."""
        extra: dict[str, Any] = {}
        if self.pooled is not None:
            extra = {"pooled_output": self.pooled, "width": self.width, "height": self.height, "crop_w": self.crop_w,
                     "crop_h": self.crop_h, "target_width": self._target()[0], "target_height": self._target()[1]}
        return [[self.context, extra]]

    def _target(self) -> tuple[int, int]:
        return (self.target_width or self.width, self.target_height or self.height)

    def added_cond_kwargs(self) -> dict[str, torch.Tensor] | None:
        """diffusers' SDXL `added_cond_kwargs`: time ids in the host's order (h, w, crop_h, crop_w, target h, w)."""
        if self.pooled is None:
            return None
        target_w, target_h = self._target()
        ids = torch.tensor([[self.height, self.width, self.crop_h, self.crop_w, target_h, target_w]],
                           dtype=self.pooled.dtype)
        return {"text_embeds": self.pooled, "time_ids": ids.repeat(self.pooled.shape[0], 1)}


def random_text_cond(kind_or_dim: str | int, batch: int = 1, tokens: int = 77, seed: int = 0,
                     **size: int) -> TextCond:
    """Seeded random conditioning; "sdxl" (or 2048) also gets a pooled embedding and size conditioning."""
    from tests.host.tiny_models import CONTEXT_DIM, POOLED_DIM

    dim = CONTEXT_DIM[kind_or_dim] if isinstance(kind_or_dim, str) else kind_or_dim
    pooled_dim = POOLED_DIM[kind_or_dim] if isinstance(kind_or_dim, str) else (1280 if dim == 2048 else None)
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, tokens, dim, generator=generator)
    pooled = torch.randn(batch, pooled_dim, generator=generator) if pooled_dim else None
    return TextCond(context=context, pooled=pooled, **size)


def _as_conditioning(cond: TextCond | Conditioning) -> Conditioning:
    return cond.comfy() if isinstance(cond, TextCond) else cond


def _probe_sampler(with_uncond: bool) -> Any:
    import comfy.samplers

    class ProbeSampler(comfy.samplers.Sampler):
        """Calls calc_cond_batch once with the guider's processed conds, as sampling_function does."""

        denoised: list[torch.Tensor] = []

        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            conds = [model_wrap.conds.get("positive"), model_wrap.conds.get("negative") if with_uncond else None]
            sigma = sigmas[0] * noise.new_ones(noise.shape[0])
            self.denoised = comfy.samplers.calc_cond_batch(model_wrap.inner_model, conds, noise, sigma,
                                                           extra_args["model_options"])
            return noise

    return ProbeSampler()


def host_denoised(model: Any, x: torch.Tensor, sigma: float, cond: TextCond | Conditioning,
                  uncond: TextCond | Conditioning | None = None, sample_sigmas: torch.Tensor | None = None,
                  seed: int = 0) -> list[torch.Tensor]:
    """The host's denoised predictions `[cond]` or `[cond, uncond]` for latent `x` at `sigma`.

    Args:
        model: a ComfyUI ModelPatcher (patches in its model_options are honoured).
        x: the noisy latent, in sampler space (what k-diffusion samplers pass). Shape: (batch, 4, h, w).
        sigma: the current sigma.
        cond, uncond: TextCond or raw CONDITIONING. Without `uncond` the batch is cond only
            (`cond_or_uncond == [0]`, as at cfg 1); with it, one batched call (`[1, 0]`, uncond first).
        sample_sigmas: the full schedule put in transformer_options["sample_sigmas"]; default `[sigma, 0]`.
    """
    import comfy.samplers

    positive = _as_conditioning(cond)
    negative = _as_conditioning(uncond) if uncond is not None else positive
    schedule = sample_sigmas if sample_sigmas is not None else torch.tensor([float(sigma), 0.0])
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    probe = _probe_sampler(uncond is not None)
    with torch.inference_mode():
        guider.sample(x.clone(), torch.zeros_like(x), probe, schedule, seed=seed)
    return [d.clone() for d in probe.denoised[: 2 if uncond is not None else 1]]


def host_eps(model: Any, x: torch.Tensor, sigma: float, cond: TextCond | Conditioning,
             uncond: TextCond | Conditioning | None = None, sample_sigmas: torch.Tensor | None = None,
             seed: int = 0) -> list[torch.Tensor]:
    """`host_denoised` as eps predictions, `(x - denoised) / sigma` (EPS models)."""
    return [(x - d) / sigma for d in host_denoised(model, x, sigma, cond, uncond, sample_sigmas, seed)]


def twin_eps(unet: torch.nn.Module, x: torch.Tensor, sigma: float, cond: TextCond, model_sampling: Any,
             **unet_kwargs: Any) -> torch.Tensor:
    """The diffusers twin's eps for the same inputs the host gives its UNet.

    Args:
        unet: a diffusers UNet2DConditionModel.
        model_sampling: the host model's `model.model.model_sampling`, for the sigma → timestep conversion.
        unet_kwargs: passed on (e.g. `cross_attention_kwargs`).
    """
    sigma_t = torch.full((x.shape[0],), float(sigma))
    timestep = model_sampling.timestep(sigma_t).float()
    with torch.no_grad():
        out = unet(x / (sigma_t.view(-1, 1, 1, 1) ** 2 + 1.0) ** 0.5, timestep, encoder_hidden_states=cond.context,
                   added_cond_kwargs=cond.added_cond_kwargs(), **unet_kwargs)
    return out.sample


@dataclass
class Attn2Hit:
    """One call of an attn2 replace patch."""

    key: tuple[str, int, int]
    transformer_index: int
    cond_or_uncond: list[int]
    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    heads: int
    extra_keys: frozenset[str]


@dataclass
class Attn2Recorder:
    """A pass-through attn2 replace patch on every block of a model that records each call.

    The patch computes the host's own attention (`optimized_attention`, as `CrossAttention.forward` does), so a
    recorded prediction equals an unpatched one.
    """

    hits: list[Attn2Hit] = field(default_factory=list)
    on_call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], None] | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        from comfy.ldm.modules.attention import optimized_attention

        block = extra_options["block"]
        self.hits.append(Attn2Hit(key=(block[0], block[1], extra_options["block_index"]),
                                  transformer_index=extra_options["transformer_index"],
                                  cond_or_uncond=list(extra_options["cond_or_uncond"]), q_shape=tuple(q.shape),
                                  k_shape=tuple(k.shape), heads=extra_options["n_heads"],
                                  extra_keys=frozenset(extra_options)))
        if self.on_call is not None:
            self.on_call(q, k, v, extra_options)
        return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options["attn_precision"],
                                   transformer_options=extra_options)

    def __deepcopy__(self, memo: dict) -> Attn2Recorder:
        # ModelPatcher.clone() deep-copies model_options; the hits must land in this object, not in a copy.
        return self

    @property
    def keys(self) -> list[tuple[str, int, int]]:
        return [h.key for h in self.hits]

    def attach(self, model: Any, max_block: int = 12) -> Any:
        """A clone of `model` with this recorder at every 2-tuple block key (input/output 0..max_block-1, middle 0),
        so whichever 3-tuple key the host looks up falls back to it."""
        patched = model.clone()
        blocks = [("input", i) for i in range(max_block)] + [("middle", 0)] + [("output", i) for i in range(max_block)]
        for name, number in blocks:
            patched.set_model_attn2_replace(self, name, number)
        return patched
