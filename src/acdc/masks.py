"""Pure mask functions: weights (or scores) in, boolean masks out (True = kept).

Counting convention (the one of ``torch.nn.utils.prune``): a sparsity ``s`` over ``n`` weights prunes exactly
``round(s * n)`` of them (Python's ``round``) and keeps the rest.

Tie-break rule (documented, deterministic): among weights of equal magnitude at the threshold, those with the
*lowest global index* are kept first. The global index orders tensors as the input dict iterates, then elements
in row-major (flattened) order inside each tensor. So all-equal weights keep a prefix of the flattened order.

``global_magnitude`` never concatenates the weights: it finds the exact k-th largest magnitude with a two-pass
radix selection over the float32 bit patterns of ``|w|`` (non-negative IEEE floats order like their integer bit
patterns), read through zero-copy int16 views of each float's high and low halves. Each pass builds a
per-tensor histogram and sums the counts, so extra memory is one histogram plus the temporaries of the largest
single tensor, and the same counts could be all-reduced across shards.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping

import torch

__all__ = ["global_magnitude", "uniform_magnitude", "n_m", "topk_mask", "pruned_count", "keep_count",
           "check_sparsity"]

_LITTLE = sys.byteorder == "little"
_NONFINITE_BUCKET = 0x7F800000 >> 16  # first high-half bucket of inf/NaN bit patterns
_CHUNK = 1 << 22  # elements per temporary chunk: bounds transient memory for huge tensors


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Validate a sparsity in [0, 1) — 1.0 would prune everything. Any real number (numpy scalars too) -> float."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise ValueError(f"`{name}` must be a number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"`{name}` must be in [0, 1) (e.g. 0.9 for 90% of weights pruned), got {sparsity!r}")
    return s


def pruned_count(n: int, sparsity: float) -> int:
    """Number of weights pruned out of ``n`` at ``sparsity``: ``round(sparsity * n)`` as torch.nn.utils.prune."""
    return int(round(sparsity * n))


def keep_count(n: int, sparsity: float) -> int:
    """Weights kept out of ``n`` at ``sparsity`` (``n - round(sparsity * n)``)."""
    return n - pruned_count(n, sparsity)


def _halves(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 16-bit halves of each float32 of the 1-D contiguous ``c``, as strided int16 views (no copy).

    ``high & 0x7FFF`` is the top 15 bits of ``|c|``'s bit pattern (sign cleared), ``low`` the bottom 16 bits.
    """
    h = c.view(torch.int16)
    return (h[1::2], h[0::2]) if _LITTLE else (h[0::2], h[1::2])


def _f32(c: torch.Tensor) -> torch.Tensor:
    return c if c.dtype == torch.float32 else c.float()


def _chunks(t: torch.Tensor):
    flat = t.detach().reshape(-1)
    for i in range(0, flat.numel(), _CHUNK):
        yield i, flat[i : i + _CHUNK]


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"weights {name!r} contain NaN or inf; cannot rank by magnitude (check the training loss)")


def _kth_bucket(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """``(b, greater)``: the bucket of ``hist`` holding the k-th largest value, and how many lie in higher buckets."""
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[i] = count(bucket >= i)
    b = int(torch.nonzero(above >= k).max())
    greater = int(above[b + 1]) if b + 1 < above.numel() else 0
    return b, greater


def _high_hist(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Counts (int64, 2**15 bins) of the high 15 bits of |w|'s float32 bit pattern over all tensors.

    Counts are additive over tensors and over shards of a tensor (the sharded top-k all-reduces them).
    """
    dev = next(iter(tensors.values())).device
    hist = torch.zeros(1 << 15, dtype=torch.int64, device=dev)
    for t in tensors.values():
        for _, c in _chunks(t):
            high, _ = _halves(_f32(c))
            hist += torch.bincount(torch.bitwise_and(high, 0x7FFF), minlength=1 << 15)
    return hist


def _low_hist(tensors: Mapping[str, torch.Tensor], b: int) -> torch.Tensor:
    """Counts (int64, 2**16 bins) of the low 16 bits of |w| among values whose high 15 bits equal ``b``."""
    dev = next(iter(tensors.values())).device
    hist2 = torch.zeros(1 << 16, dtype=torch.int64, device=dev)
    for t in tensors.values():
        for _, c in _chunks(t):
            high, low = _halves(_f32(c))
            sel = low[torch.bitwise_and(high, 0x7FFF) == b]
            if sel.numel():
                hist2 += torch.bincount(torch.bitwise_and(sel.to(torch.int32), 0xFFFF), minlength=1 << 16)
    return hist2


def _bits_to_float(bits: int) -> float:
    """The float32 whose bit pattern is the non-negative int ``bits``."""
    return torch.tensor([bits], dtype=torch.int32).view(torch.float32).item()


def _threshold_mask(t: torch.Tensor, thr: float, skip: int, take: int) -> tuple[torch.Tensor, int]:
    """Flat mask of ``|t| > thr`` plus ties ``|t| == thr``: skip the first ``skip`` ties (row-major), keep at most
    the next ``take``. Returns ``(mask, ties kept)``; callers carry the tie budget across tensors in global order."""
    mask = torch.empty(t.numel(), dtype=torch.bool, device=t.device)
    seen = kept = 0
    for i, c in _chunks(t):
        a = _f32(c).abs()
        m = a > thr
        if take > 0:
            is_eq = a == thr
            n_eq = int(is_eq.sum())
            if n_eq and seen + n_eq > skip:  # a full-size nonzero() only for chunks holding kept ties
                pos = torch.nonzero(is_eq).reshape(-1)
                lo = max(skip - seen, 0)
                chosen = pos[lo : lo + take]
                m[chosen] = True
                take -= chosen.numel()
                kept += chosen.numel()
            seen += n_eq
        mask[i : i + c.numel()] = m
    return mask, kept


def _high_bucket(tensors: Mapping[str, torch.Tensor], k: int) -> tuple[int, int, int]:
    """Radix pass 1: histogram of the high 15 bits of |w| (sign cleared) over all tensors.

    Returns ``(b, greater, in_b)``: the bucket holding the k-th largest |w|, how many values lie in higher buckets,
    and how many lie in bucket ``b``.
    """
    hist = _high_hist(tensors)
    if int(hist[_NONFINITE_BUCKET:].sum()):  # inf/NaN bit patterns sort above every finite value
        for n, t in tensors.items():
            _check_finite(n, t)
    b, greater = _kth_bucket(hist, k)
    return b, greater, int(hist[b])


def _masks_two_pass(tensors: Mapping[str, torch.Tensor], b: int, need: int) -> dict[str, torch.Tensor]:
    """Radix pass 2 when bucket ``b`` is small: keep everything above it, then pick the ``need`` largest of the
    bucket's candidates exactly (by low 16 bits; ties -> lowest global index, via a stable sort)."""
    out: dict[str, torch.Tensor] = {}
    cand_pos: list[tuple[torch.Tensor, torch.Tensor]] = []  # (flat mask, indices into it)
    cand_low: list[torch.Tensor] = []
    for n, t in tensors.items():
        mask = torch.empty(t.numel(), dtype=torch.bool, device=t.device)
        for i, c in _chunks(t):
            high, low = _halves(_f32(c))
            hb = torch.bitwise_and(high, 0x7FFF)
            torch.gt(hb, b, out=mask[i : i + c.numel()])
            idx = torch.nonzero(hb == b).reshape(-1)
            if idx.numel():
                cand_pos.append((mask, idx + i))
                cand_low.append(torch.bitwise_and(low[idx].to(torch.int32), 0xFFFF))
        out[n] = mask.view(t.shape)
    lows = torch.cat(cand_low)
    chosen = torch.argsort(lows, descending=True, stable=True)[:need]  # candidates are in global-index order
    flag = torch.zeros(lows.numel(), dtype=torch.bool, device=lows.device)
    flag[chosen] = True
    start = 0
    for mask, idx in cand_pos:
        sel = flag[start : start + idx.numel()]
        mask[idx[sel]] = True
        start += idx.numel()
    return out


def _masks_three_pass(tensors: Mapping[str, torch.Tensor], b: int, need: int) -> dict[str, torch.Tensor]:
    """Radix passes 2-3 when bucket ``b`` is large (e.g. many exact zeros): histogram its low 16 bits to get the
    exact threshold value, then threshold and fill the ties lowest global index first."""
    lo, greater2 = _kth_bucket(_low_hist(tensors, b), need)
    thr = _bits_to_float((b << 16) | lo)
    ties_left = need - greater2  # >= 1 values equal to the threshold to keep, lowest global index first
    out: dict[str, torch.Tensor] = {}
    for n, t in tensors.items():
        mask, kept = _threshold_mask(t, thr, 0, ties_left)
        ties_left -= kept
        out[n] = mask.view(t.shape)
    return out


def topk_mask(tensors: Mapping[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """Keep exactly the ``keep`` largest |values| across ``tensors`` jointly (ties: lowest global index first)."""
    total = sum(t.numel() for t in tensors.values())
    if not 0 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} weights")
    if keep == 0:
        return {n: torch.zeros(t.shape, dtype=torch.bool, device=t.device) for n, t in tensors.items()}
    if keep == total:
        return {n: torch.ones(t.shape, dtype=torch.bool, device=t.device) for n, t in tensors.items()}
    b, greater, in_b = _high_bucket(tensors, keep)
    need = keep - greater  # how many to take from bucket b (>= 1)
    # candidate indices cost 8 bytes each: only gather them when the bucket is a small part of the weights
    if in_b <= max(1 << 16, total // 64):
        return _masks_two_pass(tensors, b, need)
    return _masks_three_pass(tensors, b, need)


def global_magnitude(weights: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One global top-|w| mask over all tensors: prunes exactly ``round(sparsity * n_total)`` weights.

    Equals ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)`` on tie-free weights.
    """
    s = check_sparsity(sparsity)
    if not weights:
        raise ValueError("global_magnitude: no weights given")
    total = sum(t.numel() for t in weights.values())
    return topk_mask(weights, keep_count(total, s))


def uniform_magnitude(
    weights: Mapping[str, torch.Tensor], sparsity: float | Mapping[str, float]
) -> dict[str, torch.Tensor]:
    """Per-tensor top-|w| masks, each pruning ``round(s * n_layer)`` (equals ``prune.l1_unstructured`` per layer).

    ``sparsity`` may be one number or a per-name mapping (used by ERK-style distributions).
    """
    out = {}
    for n, t in weights.items():
        s = check_sparsity(sparsity[n] if isinstance(sparsity, Mapping) else sparsity, f"sparsity[{n}]")
        out.update(topk_mask({n: t}, keep_count(t.numel(), s)))
    return out


def n_m(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M mask: keep the ``n`` largest |w| in each group of ``m`` consecutive input channels.

    Groups run along dim 1 (input channels) at every (out, *kernel) position — the layout sparse tensor cores
    use. Ties inside a group keep the lower channel index. Raises ValueError when dim 1 is not a multiple of m.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
        raise ValueError(f"N:M needs integers 0 < n <= m, got n={n!r}, m={m!r}")
    if weight.dim() < 2:
        raise ValueError(f"N:M needs a weight with input channels (dim >= 2), got shape {tuple(weight.shape)}")
    cin = weight.shape[1]
    if cin % m:
        raise ValueError(f"N:M: input channels ({cin}) are not a multiple of m={m}; skip this layer")
    w = weight.detach().abs().float()
    if not torch.isfinite(w).all():
        raise ValueError("N:M: weights contain NaN or inf; cannot rank by magnitude (check the training loss)")
    w = w.movedim(1, -1)  # (out, *kernel, cin)
    shape = w.shape
    g = w.reshape(*shape[:-1], cin // m, m)
    order = torch.argsort(-g, dim=-1, stable=True)  # descending, ties -> lower index first
    keep = torch.zeros_like(g, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(shape).movedim(-1, 1).contiguous()
