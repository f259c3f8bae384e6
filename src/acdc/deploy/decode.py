"""Incremental (KV-cached) next-token decoding for :class:`acdc.models.TransformerLM`.

The model's own ``forward`` recomputes the whole window for every new token; a decoder keeps each layer's keys and
values, so a new token costs one row through every Linear layer. That is where the CPU-sparse path (a CSR matrix
times one vector) pays most. It calls the model's own submodules, so it runs a dense model and a
:func:`acdc.deploy.to_cpu_sparse` model alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Past = list[tuple[torch.Tensor, torch.Tensor]]


def _check(model: nn.Module) -> None:
    for attr in ("tok_emb", "pos_emb", "blocks", "ln_f", "head", "n_heads", "context"):
        if not hasattr(model, attr):
            raise TypeError(f"KV-cached decoding needs an acdc TransformerLM (missing `{attr}` on "
                            f"{type(model).__name__})")


def lm_step(model: nn.Module, tokens: torch.Tensor, past: Past | None = None) -> tuple[torch.Tensor, Past]:
    """Logits ``(B, T, vocab)`` of ``tokens`` ``(B, T)`` that follow the cached ``past``; returns the new cache.

    Equals ``model(full_sequence)[:, -T:]`` (eval mode: dropout off). ``past`` is one (keys, values) pair per
    block, each ``(B, heads, P, head_dim)``; ``None`` starts a sequence.
    """
    _check(model)
    b, t = tokens.shape
    p = 0 if not past else past[0][0].shape[2]
    if p + t > model.context:
        raise ValueError(f"sequence length {p + t} exceeds the model context {model.context}")
    x = model.tok_emb(tokens) + model.pos_emb(torch.arange(p, p + t, device=tokens.device))
    c = x.shape[-1]
    h = model.n_heads
    mask = None
    if t > 1:  # query i (absolute position p + i) sees keys 0 .. p + i
        mask = torch.ones(t, p + t, dtype=torch.bool, device=tokens.device).tril(p)
    present: Past = []
    for i, blk in enumerate(model.blocks):
        # (B, T, 3C) -> 3 x (B, H, T, C/H) in one view + permute: per-op overhead dominates a batch-1 step
        q, k, v = blk.attn.qkv(blk.ln1(x)).reshape(b, t, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        if past:
            k = torch.cat([past[i][0], k], dim=2)
            v = torch.cat([past[i][1], v], dim=2)
        present.append((k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + blk.attn.proj(y.transpose(1, 2).reshape(b, t, c))
        x = x + blk.mlp(blk.ln2(x))
    return model.head(model.ln_f(x)), present


@torch.inference_mode()
def generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation of ``prompt`` ``(B, T)`` by ``new_tokens`` tokens, with a KV cache."""
    logits, past = lm_step(model, prompt)
    out = [prompt]
    for _ in range(new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        logits, past = lm_step(model, nxt, past)
    return torch.cat(out, dim=1)
