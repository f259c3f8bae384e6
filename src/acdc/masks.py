"""Pure mask functions: weights (or scores) in, boolean masks out (True = kept).

Counting convention (the one of ``torch.nn.utils.prune``): a sparsity ``s`` over ``n`` weights prunes exactly
``round(s * n)`` of them (Python's ``round``) and keeps the rest.

Tie-break rule (documented, deterministic): among weights of equal magnitude at the threshold, those with the
*lowest global index* are kept first. The global index orders tensors as the input dict iterates, then elements
in row-major (flattened) order inside each tensor. So all-equal weights keep a prefix of the flattened order.

``global_magnitude`` never concatenates the weights: it finds the exact k-th largest magnitude with a two-pass
radix selection over the float32 bit patterns of ``|w|`` (non-negative IEEE floats order like their integer bit
patterns). Each pass builds a per-tensor histogram and sums the counts, so extra memory is one histogram plus the
temporaries of the largest single tensor, and the same counts could be all-reduced across shards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["global_magnitude", "uniform_magnitude", "n_m", "topk_mask", "pruned_count", "check_sparsity"]

_HI_SHIFT = 15  # float32 |w| has 31 significant bits: 16 high bits (pass 1), 15 low bits (pass 2)
_LO_MASK = (1 << _HI_SHIFT) - 1
_NONFINITE_BUCKET = 0x7F800000 >> _HI_SHIFT  # first high-bits bucket of inf/NaN
_CHUNK = 1 << 22  # elements per temporary chunk: bounds transient memory for huge tensors


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Validate a sparsity in [0, 1) — 1.0 would prune everything."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"`{name}` must be a number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"`{name}` must be in [0, 1) (e.g. 0.9 for 90% of weights pruned), got {sparsity!r}")
    return s


def pruned_count(n: int, sparsity: float) -> int:
    """Number of weights pruned out of ``n`` at ``sparsity``: ``round(sparsity * n)`` as torch.nn.utils.prune."""
    return int(round(sparsity * n))


def _abs_bits(t: torch.Tensor) -> torch.Tensor:
    """int32 view of float32 |t| (flattened, detached); monotone in |t|."""
    a = t.detach().reshape(-1)
    a = a.abs() if a.dtype == torch.float32 else a.abs().float()
    return a.view(torch.int32)


def _chunks(t: torch.Tensor):
    flat = t.detach().reshape(-1)
    for i in range(0, flat.numel(), _CHUNK):
        yield i, flat[i : i + _CHUNK]


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"weights {name!r} contain NaN or inf; cannot rank by magnitude (check the training loss)")


def _kth_largest_bits(tensors: Mapping[str, torch.Tensor], k: int) -> tuple[int, int]:
    """Bit pattern ``T`` of the k-th largest |w| over all tensors (k >= 1) and ``count(|w| > T)``."""
    dev = next(iter(tensors.values())).device
    hist = torch.zeros(1 << 16, dtype=torch.int64, device=dev)
    for t in tensors.values():
        for _, c in _chunks(t):
            hist += torch.bincount(torch.bitwise_right_shift(_abs_bits(c), _HI_SHIFT), minlength=1 << 16)
    if int(hist[_NONFINITE_BUCKET:].sum()):  # inf/NaN bit patterns sort above every finite value
        for n, t in tensors.items():
            _check_finite(n, t)
    # bucket b holding the k-th largest: counts from the top
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[i] = count(hi >= i)
    b = int(torch.nonzero(above >= k).max())
    greater = int(above[b + 1]) if b + 1 < above.numel() else 0  # count(hi > b)
    need = k - greater  # how many to take from bucket b (>= 1)
    hist2 = torch.zeros(1 << _HI_SHIFT, dtype=torch.int64, device=dev)
    for t in tensors.values():
        for _, c in _chunks(t):
            bits = _abs_bits(c)
            sel = bits[torch.bitwise_right_shift(bits, _HI_SHIFT) == b]
            if sel.numel():
                hist2 += torch.bincount(torch.bitwise_and(sel, _LO_MASK), minlength=1 << _HI_SHIFT)
    above2 = torch.flip(torch.cumsum(torch.flip(hist2, [0]), 0), [0])
    lo = int(torch.nonzero(above2 >= need).max())
    greater2 = int(above2[lo + 1]) if lo + 1 < above2.numel() else 0
    threshold = (b << _HI_SHIFT) | lo
    return threshold, greater + greater2


def topk_mask(tensors: Mapping[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """Keep exactly the ``keep`` largest |values| across ``tensors`` jointly (ties: lowest global index first)."""
    names = list(tensors)
    total = sum(t.numel() for t in tensors.values())
    if not 0 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} weights")
    if keep == 0:
        return {n: torch.zeros(t.shape, dtype=torch.bool, device=t.device) for n, t in tensors.items()}
    if keep == total:
        return {n: torch.ones(t.shape, dtype=torch.bool, device=t.device) for n, t in tensors.items()}
    thr, n_greater = _kth_largest_bits(tensors, keep)
    ties_left = keep - n_greater  # >= 1 entries equal to the threshold to keep, lowest global index first
    out: dict[str, torch.Tensor] = {}
    for n in names:
        t = tensors[n]
        mask = torch.empty(t.numel(), dtype=torch.bool, device=t.device)
        for i, c in _chunks(t):
            bits = _abs_bits(c)
            m = bits > thr
            if ties_left > 0:
                is_eq = bits == thr
                if bool(is_eq.any()):  # a full-size nonzero() only for the (usually one) chunk holding ties
                    take = torch.nonzero(is_eq).reshape(-1)[:ties_left]
                    m[take] = True
                    ties_left -= take.numel()
            mask[i : i + c.numel()] = m
        out[n] = mask.view(t.shape)
    return out


def global_magnitude(weights: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One global top-|w| mask over all tensors: prunes exactly ``round(sparsity * n_total)`` weights.

    Equals ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)`` on tie-free weights.
    """
    s = check_sparsity(sparsity)
    if not weights:
        raise ValueError("global_magnitude: no weights given")
    total = sum(t.numel() for t in weights.values())
    return topk_mask(weights, total - pruned_count(total, s))


def uniform_magnitude(
    weights: Mapping[str, torch.Tensor], sparsity: float | Mapping[str, float]
) -> dict[str, torch.Tensor]:
    """Per-tensor top-|w| masks, each pruning ``round(s * n_layer)`` (equals ``prune.l1_unstructured`` per layer).

    ``sparsity`` may be one number or a per-name mapping (used by ERK-style distributions).
    """
    out = {}
    for n, t in weights.items():
        s = check_sparsity(sparsity[n] if isinstance(sparsity, Mapping) else sparsity, f"sparsity[{n}]")
        out.update(topk_mask({n: t}, t.numel() - pruned_count(t.numel(), s)))
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
