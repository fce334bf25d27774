"""XLabs' image term on a FLUX.1 double block: the host's own block runs unchanged, then
`img += weight * Attn(q_img, K_ip, V_ip)` per adapter.

q_img is the block's image-stream query after its QK norm and before RoPE, recomputed from the block's input with the
block's own (LoRA-patched) modules: `img_mod`, `img_norm1`, `img_attn.qkv`, `img_attn.norm.query_norm`. The term
is added after the block's attention and MLP residuals, with no gate (diffusers `FluxIPAdapterAttnProcessor`).
"""

from __future__ import annotations

import torch
from comfy.ldm.flux.layers import DoubleStreamBlock, apply_mod

from ...ip_adapter import ImageTerm
from ...ip_adapter.attention import image_attention
from ...ip_adapter.dit.block_patch import CallContext
from ...ip_adapter.dit.entry import DiTEntry
from ...ip_adapter.run_plan import plan_of
from .host import host_attention


def image_queries(block: DoubleStreamBlock, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """The block's normalised image queries for input `img` (B, L, hidden). Returns (B, L, hidden)."""
    mod, _ = block.img_mod(vec)
    qkv = block.img_attn.qkv(apply_mod(block.img_norm1(img), 1 + mod.scale, mod.shift))
    b, n, _ = qkv.shape
    q = qkv.view(b, n, 3, block.num_heads, -1)[:, :, 0]
    return block.img_attn.norm.query_norm(q).to(qkv.dtype).reshape(b, n, -1)


def run(index: int, entries: tuple[DiTEntry, ...], args: dict, original, context: CallContext) -> dict:
    """The double block `index` with every active entry's image term.

    Args:
        args: the host's block arguments (`img`, `txt`, `vec`, `pe`, `attn_mask`, `transformer_options`).
        original: the block below ours (the host's block, or a foreign patch wrapping it): args -> {"img", "txt"}.
    """
    to = args["transformer_options"]
    plan = plan_of(to)
    weighted = [(entry, w) for entry in entries if (w := entry.weight(index, plan, to)) != 0]
    img_in = args["img"]
    out = original(args)
    if not weighted:
        return out
    block = context.diffusion_model.double_blocks[index]
    q = image_queries(block, img_in, args["vec"])
    rows, layout = plan.row_index(to, q.shape[0], q.device), plan.layout(to, q.shape[0])
    img = out["img"]
    for entry, w in weighted:
        k, v = entry.image_kv(index, rows, q.device, q.dtype)
        term = ImageTerm(k, v, w, entry.row_mask(layout, q.shape[1], context.token_grid, q))
        img = img + image_attention(q, term, block.num_heads, host_attention(to)).to(img.dtype)
    return {**out, "img": img}
