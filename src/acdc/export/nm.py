"""N:M structured sparsity: check that every group of M consecutive input channels holds at most N non-zeros."""

from __future__ import annotations

import re

import torch

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class NMPatternError(ValueError):
    """A weight breaks the N:M pattern it is exported under; the message names the layer and the fix."""


def parse_nm(structure: str) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4); ``"unstructured"`` -> None; anything else raises ValueError."""
    if structure == "unstructured":
        return None
    m = _NM_RE.match(str(structure))
    if not m or not 0 < int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"sparsity structure must be 'unstructured' or 'N:M' with 0 < N < M (e.g. '2:4'), "
                         f"got {structure!r}")
    return int(m.group(1)), int(m.group(2))


def nm_groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """Non-zero counts per group of ``m`` input channels, shape (out, *kernel, in // m).

    Input channels are dim 1 (Linear ``(out, in)``, Conv ``(out, in, *k)``), as in :class:`acdc.targets.Target`.
    """
    w = weight.detach()
    if w.dim() < 2 or w.shape[1] % m:
        raise ValueError(f"weight of shape {tuple(w.shape)} has no whole groups of {m} input channels")
    w = w.movedim(1, -1)  # (out, *k, in)
    return (w != 0).reshape(*w.shape[:-1], w.shape[-1] // m, m).sum(-1)


def check_nm(weights: dict[str, torch.Tensor], structure: str) -> list[str]:
    """Validate ``structure`` ("N:M") on every weight; returns the names checked.

    Layers whose input channels are not a multiple of M are the ones N:M training leaves dense: they are not
    checked and not returned. Raises :class:`NMPatternError` at the first violating group.
    """
    nm = parse_nm(structure)
    if nm is None:
        return []
    n, m = nm
    checked = []
    for name, w in weights.items():
        if w.dim() < 2 or w.shape[1] % m:
            continue
        counts = nm_groups(w, m)
        bad = (counts > n).nonzero()
        if len(bad):
            idx = tuple(int(i) for i in bad[0])
            in_ch = idx[-1] * m
            raise NMPatternError(
                f"{name}: the {n}:{m} pattern is violated ({int(counts[idx])} non-zeros in input channels "
                f"{in_ch}-{in_ch + m - 1} at output position {idx[:-1]}); export with --structure unstructured "
                f"or re-prune the model with target '{n}:{m}'")
        checked.append(name)
    return checked
