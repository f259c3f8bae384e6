"""Incremental (KV-cached) next-token decoding for :class:`acdc.models.TransformerLM`.

The model's own ``forward`` recomputes the whole window for every new token; a decoder keeps each layer's keys and
values, so a new token costs one row through every Linear layer. That is where the CPU-sparse path (a CSR matrix
times one vector) pays most. Both decoders call the model's own weights, so they run a dense model and a
:func:`acdc.deploy.to_cpu_sparse` model alike:

- :func:`lm_step` is the functional form: the cache goes in and comes out (``torch.cat`` per layer, like the ONNX
  graph of a decoding step that ONNX Runtime runs in ``bench/bench_infer.py``);
- :class:`KVDecoder` keeps the cache in preallocated buffers (no copy of the whole cache per token) and runs a
  single-sequence, single-token step as plain ``addmv`` / ``layer_norm`` calls on the layers' tensors, without the
  per-module Python overhead that dominates a batch-1 step of a narrow model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_sparse import SparseLinear

Past = list[tuple[torch.Tensor, torch.Tensor]]


def _check(model: nn.Module) -> None:
    for attr in ("tok_emb", "pos_emb", "blocks", "ln_f", "head", "n_heads", "context"):
        if not hasattr(model, attr):
            raise TypeError(f"KV-cached decoding needs an acdc TransformerLM (missing `{attr}` on "
                            f"{type(model).__name__})")


def _attend(blk: nn.Module, x: torch.Tensor, h: int, cache: Callable, mask: torch.Tensor | None) -> torch.Tensor:
    """``x + attn(ln1(x))`` for new rows ``x`` (B, T, C); ``cache(k, v)`` returns the keys/values to attend to."""
    b, t, c = x.shape
    # (B, T, 3C) -> 3 x (B, H, T, C/H) in one view + permute: per-op overhead dominates a batch-1 step
    q, k, v = blk.attn.qkv(blk.ln1(x)).reshape(b, t, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
    k, v = cache(k, v)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return x + blk.attn.proj(y.transpose(1, 2).reshape(b, t, c))


def _causal_mask(p: int, t: int, device: torch.device) -> torch.Tensor | None:
    # query i (absolute position p + i) sees keys 0 .. p + i; a single query sees everything cached
    return torch.ones(t, p + t, dtype=torch.bool, device=device).tril(p) if t > 1 else None


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
    mask = _causal_mask(p, t, tokens.device)
    present: Past = []

    def cat(i: int) -> Callable:
        def fn(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if past:
                k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
            present.append((k, v))
            return k, v
        return fn

    for i, blk in enumerate(model.blocks):
        x = _attend(blk, x, model.n_heads, cat(i), mask)
        x = x + blk.mlp(blk.ln2(x))
    return model.head(model.ln_f(x)), present


def _vector_linear(mod: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``f(v)`` = the layer applied to one 1-D row, as a single ``addmv`` (bias fused); None for other layers."""
    if isinstance(mod, SparseLinear):
        weight = mod.csr()
    elif type(mod) is nn.Linear:
        weight = mod.weight
    else:
        return None
    bias = mod.bias
    return (lambda v: torch.mv(weight, v)) if bias is None else (lambda v: torch.addmv(bias, weight, v))


def _row_plan(model: nn.Module) -> list | None:
    """Per block (ln1, qkv, proj, ln2, fc1, gelu mode, fc2) as tensors/callables; None if the layout differs."""
    plan = []
    for blk in model.blocks:
        mlp = list(blk.mlp) if isinstance(blk.mlp, nn.Sequential) else []
        if len(mlp) != 4 or type(mlp[1]) is not nn.GELU or not isinstance(mlp[3], nn.Dropout):
            return None
        fns = [_vector_linear(m) for m in (blk.attn.qkv, blk.attn.proj, mlp[0], mlp[2])]
        if any(f is None for f in fns) or not all(type(n) is nn.LayerNorm for n in (blk.ln1, blk.ln2)):
            return None
        ln1, ln2 = ((n.weight, n.bias, n.eps) for n in (blk.ln1, blk.ln2))
        plan.append((ln1, fns[0], fns[1], ln2, fns[2], mlp[1].approximate, fns[3]))
    head = _vector_linear(model.head)
    if head is None or type(model.ln_f) is not nn.LayerNorm or type(model.tok_emb) is not nn.Embedding:
        return None
    return [plan, (model.ln_f.weight, model.ln_f.bias, model.ln_f.eps), head]


class KVDecoder:
    """Next-token decoding of one batch of sequences with a preallocated KV cache.

    ``step(tokens)`` returns the logits ``(B, T, vocab)`` of ``tokens`` ``(B, T)`` following everything stepped
    before (equal to ``model(full_sequence)[:, -T:]``); ``reset()`` starts new sequences. The cache is one
    ``(layers, B, heads, context, head_dim)`` buffer each for keys and values, written in place. A step of one
    token of one sequence (batch-1 decoding) runs the layers' own tensors through ``addmv`` and ``layer_norm``
    directly. The decoder holds references to the model's tensors: build it after the model is final (e.g.
    after :func:`acdc.deploy.to_cpu_sparse`), in eval mode.
    """

    def __init__(self, model: nn.Module) -> None:
        _check(model)
        if model.training:
            raise ValueError("KVDecoder needs the model in eval mode (dropout off): call model.eval() first")
        self.model = model
        self.heads, self.context = int(model.n_heads), int(model.context)
        self.width = int(model.tok_emb.weight.shape[1])
        self._plan = _row_plan(model)
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self.length = 0

    def reset(self) -> None:
        """Forget the cached sequences (the buffers are reused)."""
        self.length = 0

    def _buffers(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(self.model.blocks), batch, self.heads, self.context, self.width // self.heads)
        if self._keys is None or self._keys.shape != shape or self._keys.dtype != like.dtype:
            if self.length:
                raise ValueError(f"batch of {batch} sequences, but the cache holds {self._keys.shape[1]}: "
                                 "call reset() to start new sequences")
            self._keys = torch.zeros(shape, dtype=like.dtype, device=like.device)
            self._values = torch.zeros_like(self._keys)
        return self._keys, self._values

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` of the next ``tokens`` ``(B, T)``; appends them to the cache."""
        b, t = tokens.shape
        p = self.length
        if p + t > self.context:
            raise ValueError(f"sequence length {p + t} exceeds the model context {self.context}")
        keys, values = self._buffers(b, self.model.tok_emb.weight)
        with torch.inference_mode():
            if b == 1 and t == 1 and self._plan is not None:
                logits = self._row_step(int(tokens[0, 0]), p, keys, values)
            else:
                logits = self._batch_step(tokens, p, keys, values)
        self.length = p + t
        return logits

    def _batch_step(self, tokens: torch.Tensor, p: int, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        model, t = self.model, tokens.shape[1]
        x = model.tok_emb(tokens) + model.pos_emb(torch.arange(p, p + t, device=tokens.device))
        mask = _causal_mask(p, t, tokens.device)

        def cached(i: int) -> Callable:
            def fn(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                keys[i, :, :, p:p + t] = k
                values[i, :, :, p:p + t] = v
                return keys[i, :, :, :p + t], values[i, :, :, :p + t]
            return fn

        for i, blk in enumerate(model.blocks):
            x = _attend(blk, x, self.heads, cached(i), mask)
            x = x + blk.mlp(blk.ln2(x))
        return model.head(model.ln_f(x))

    def _row_step(self, token: int, p: int, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        blocks, ln_f, head = self._plan
        c, h = self.width, self.heads
        shape = (c,)
        x = self.model.tok_emb.weight[token] + self.model.pos_emb.weight[p]
        layer_keys, layer_values = keys.unbind(0), values.unbind(0)
        for i, (ln1, qkv, proj, ln2, fc1, gelu, fc2) in enumerate(blocks):
            q, k, v = qkv(F.layer_norm(x, shape, *ln1)).view(3, 1, h, 1, c // h).unbind(0)
            ks, vs = layer_keys[i], layer_values[i]  # narrow + copy_: cheaper than __setitem__ with slices
            ks.narrow(2, p, 1).copy_(k)
            vs.narrow(2, p, 1).copy_(v)
            y = F.scaled_dot_product_attention(q, ks.narrow(2, 0, p + 1), vs.narrow(2, 0, p + 1))
            x = x + proj(y.view(c))
            x = x + fc2(F.gelu(fc1(F.layer_norm(x, shape, *ln2)), approximate=gelu))
        return head(F.layer_norm(x, shape, *ln_f)).view(1, 1, -1)


@torch.inference_mode()
def generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation of ``prompt`` ``(B, T)`` by ``new_tokens`` tokens, with a KV cache."""
    decoder = KVDecoder(model)
    logits = decoder.step(prompt)
    out = [prompt]
    for _ in range(new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        logits = decoder.step(nxt)
    return torch.cat(out, dim=1)
