"""InstantX's image term inside an SD3.5 joint block.

The term joins the image stream's attention output *before* its out-projection, so the block's mixing (the host's
`mmdit._block_mixing`) is run here with the block's own (LoRA-patched) modules: context and image pre-attention,
one joint attention through the host's attention function, the context post-attention, then
`x_attn += weight * JointIPAttn(...)` per adapter, then the image post-attention. With no active adapter the host's
own block runs instead.
"""

from __future__ import annotations

import torch
from comfy.ldm.modules.diffusionmodules.mmdit import JointBlock, modulate, split_qkv

from ...ip_adapter.dit.block_patch import CallContext
from ...ip_adapter.dit.entry import DiTEntry
from ...ip_adapter.placement import compute_dtype, run_on
from ...ip_adapter.run_plan import RunPlan, plan_of
from .host import AttentionFn, host_attention

#: adaLN chunks of a (non dual-attention) x block: shift/scale/gate for attention, shift/scale/gate for the MLP.
X_MODULATION_CHUNKS = 6


def _image_qkv(block: JointBlock, x: torch.Tensor, c: torch.Tensor) -> tuple[tuple, tuple, tuple]:
    """The x block's pre-attention, keeping q and k from before its norms. Returns (normed qkv, raw qkv, mods)."""
    xb = block.x_block
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = xb.adaLN_modulation(c).chunk(
        X_MODULATION_CHUNKS, dim=1)
    q, k, v = split_qkv(xb.attn.qkv(modulate(xb.norm1(x), shift_msa, scale_msa)), xb.attn.head_dim)
    b, n = q.shape[:2]
    raw = (q.reshape(b, n, -1), k.reshape(b, n, -1), v.reshape(b, n, -1))
    normed = (xb.attn.ln_q(q).reshape(b, n, -1), xb.attn.ln_k(k).reshape(b, n, -1), raw[2])
    return normed, raw, (gate_msa, shift_mlp, scale_mlp, gate_mlp)


def _ip_terms(index: int, weighted: list, raw: tuple, plan: RunPlan, heads: int, to: dict, context: CallContext,
              attention: AttentionFn) -> torch.Tensor:
    """Sum of `weight * mask * JointIPAttn` over the active entries. Shape: (B, L, hidden)."""
    q_raw, k_raw, v = raw
    rows, layout = plan.row_index(to, q_raw.shape[0], q_raw.device), plan.layout(to, q_raw.shape[0])
    total = torch.zeros_like(q_raw)
    for entry, w in weighted:
        adapter = entry.adapter
        tokens, temb = entry.tokens(plan, to, q_raw.dtype)  # made where the adapter is loaded, once per step
        dtype = compute_dtype(tokens.device, adapter.dtype, q_raw.dtype)
        with torch.no_grad():
            pair = run_on(adapter.layers.layer(index), tokens.device, dtype, tokens, temb)
        ip_k, ip_v = (t.to(q_raw.device, q_raw.dtype).index_select(0, rows) for t in pair)
        term = adapter.layers.layer(index).attention(q_raw, k_raw, v, ip_k, ip_v, heads, attention)
        mask = entry.row_mask(layout, q_raw.shape[1], context.token_grid, q_raw)
        total = total + (term if mask is None else term * mask) * w
    return total


def run(index: int, entries: tuple[DiTEntry, ...], args: dict, original, context: CallContext) -> dict:
    """Joint block `index` with every active entry's image term (the host's block when none is active).

    Args:
        args: the host's block arguments (`img`, `txt`, `vec`, `transformer_options`).
        original: the host's block: args -> {"txt", "img"}.
    """
    to = args["transformer_options"]
    plan = plan_of(to)
    weighted = [(entry, w) for entry in entries if (w := entry.weight(index, plan, to)) != 0]
    if not weighted:
        return original(args)
    block = context.diffusion_model.joint_blocks[index]
    cb, xb = block.context_block, block.x_block
    txt, x, c = args["txt"], args["img"], args["vec"]
    context_qkv, context_rest = cb.pre_attention(txt, c)
    normed, raw, mods = _image_qkv(block, x, c)
    heads, attention = xb.attn.num_heads, host_attention(to)
    qkv = [torch.cat((context_qkv[t].reshape(*normed[t].shape[:1], -1, normed[t].shape[-1]), normed[t]), dim=1)
           for t in range(3)]
    attn = attention(qkv[0], qkv[1], qkv[2], heads)
    n_txt = context_qkv[0].shape[1]
    context_attn, x_attn = attn[:, :n_txt], attn[:, n_txt:]
    txt_out = None if cb.pre_only else cb.post_attention(context_attn, *context_rest)
    x_attn = x_attn + _ip_terms(index, weighted, raw, plan, heads, to, context, attention).to(x_attn.dtype)
    return {"txt": txt_out, "img": xb.post_attention(x_attn, x, *mods)}
