"""Layer sparsity allocation (uniform, ERK, global) and the mask-selection helpers shared by the baselines.

- ``uniform``: every layer at the target sparsity.
- ``erk`` (Erdős–Rényi-Kernel, Evci et al. 2020): layer density ∝ (sum of the weight's dimensions) / (its number
  of elements), i.e. (n_in + n_out + kh + kw)/(n_in·n_out·kh·kw) for a conv and (n_in + n_out)/(n_in·n_out) for a
  Linear, raised to ``power_scale``; scaled so the total number of kept weights meets the target. Layers whose
  density would exceed 1 are made dense and the rest is redistributed, exactly like the RigL reference
  implementation (``sparse_utils.get_sparsities``).
- ``global``: the per-layer sparsities a global magnitude top-k of the current weights would give.

Per-layer counts follow :func:`acdc.masks.pruned_count`: a layer of ``n`` weights at sparsity ``s`` prunes
``round(s * n)`` and keeps :func:`acdc.masks.keep_count` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..masks import check_sparsity, global_magnitude, keep_count, topk_mask

__all__ = ["DISTRIBUTIONS", "layer_sparsities", "uniform", "erk", "global_", "keep_count", "topk_within",
           "random_masks"]

DISTRIBUTIONS = ("erk", "uniform", "global")


def uniform(params: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, float]:
    """Every layer at ``sparsity``."""
    s = check_sparsity(sparsity)
    return {n: s for n in params}


def erk(params: Mapping[str, torch.Tensor], sparsity: float, power_scale: float = 1.0) -> dict[str, float]:
    """ERK layer sparsities meeting ``sparsity`` overall (densities capped at 1, excess redistributed)."""
    s = check_sparsity(sparsity)
    if not params:
        raise ValueError("erk: no parameters given")
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    numel = {n: p.numel() for n, p in params.items()}
    raw = {n: (sum(sh) / numel[n]) ** power_scale for n, sh in shapes.items()}
    dense: set[str] = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        for n in params:
            if n in dense:
                rhs -= numel[n] * s  # a dense layer's would-be zeros must be found elsewhere
            else:
                rhs += numel[n] * (1.0 - s)
                divisor += raw[n] * numel[n]
        if divisor == 0:
            raise ValueError(f"erk: cannot reach sparsity {s} with every layer dense")
        eps = rhs / divisor
        max_raw = max(raw[n] for n in params if n not in dense)
        if max_raw * eps <= 1.0:
            break
        dense.update(n for n in params if n not in dense and raw[n] == max_raw)
    return {n: 0.0 if n in dense else 1.0 - eps * raw[n] for n in params}


def global_(params: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, float]:
    """Per-layer sparsities of a global magnitude top-k of the current weights."""
    m = global_magnitude({n: p.detach() for n, p in params.items()}, sparsity)
    return {n: 1.0 - float(m[n].sum()) / m[n].numel() for n in params}


def layer_sparsities(kind: str, params: Mapping[str, torch.Tensor], sparsity: float,
                     erk_power_scale: float = 1.0) -> dict[str, float]:
    """Dispatch on ``kind`` in :data:`DISTRIBUTIONS`."""
    if kind == "erk":
        return erk(params, sparsity, erk_power_scale)
    if kind == "uniform":
        return uniform(params, sparsity)
    if kind == "global":
        return global_(params, sparsity)
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {kind!r}")


def topk_within(scores: Mapping[str, torch.Tensor], allowed: Mapping[str, torch.Tensor] | None,
                keep: int) -> dict[str, torch.Tensor]:
    """Keep the ``keep`` largest |scores| jointly over the tensors, choosing only ``allowed`` positions.

    Ties keep the lowest global index first (as :func:`acdc.masks.topk_mask`). Exact: when the threshold falls on
    zero-score entries, allowed zeros are preferred to disallowed ones.
    """
    if allowed is None:
        return topk_mask(scores, keep)
    n_allowed = sum(int(a.sum()) for a in allowed.values())
    if not 0 <= keep <= n_allowed:
        raise ValueError(f"cannot keep {keep} of {n_allowed} allowed positions")
    masked = {n: torch.where(allowed[n], s.detach(), torch.zeros((), dtype=s.dtype, device=s.device))
              for n, s in scores.items()}
    out = topk_mask(masked, keep)
    if all(not bool((m & ~allowed[n]).any()) for n, m in out.items()):
        return out
    # the threshold is 0: swap disallowed zeros for allowed zeros, lowest global index first
    out = {n: m & allowed[n] for n, m in out.items()}
    deficit = keep - sum(int(m.sum()) for m in out.values())
    for n, m in out.items():
        if deficit <= 0:
            break
        free = torch.nonzero((allowed[n] & ~m).reshape(-1)).reshape(-1)[:deficit]
        m.view(-1)[free] = True
        deficit -= free.numel()
    return out


def random_masks(params: Mapping[str, torch.Tensor], sparsities: Mapping[str, float],
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Uniformly random masks keeping exactly ``keep_count(n, s)`` weights per layer (seeded CPU generator)."""
    out = {}
    for n, p in params.items():
        k = keep_count(p.numel(), sparsities[n])
        idx = torch.randperm(p.numel(), generator=generator)[:k]
        m = torch.zeros(p.numel(), dtype=torch.bool)
        m[idx] = True
        out[n] = m.view(p.shape).to(p.device)
    return out
