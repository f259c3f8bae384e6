"""Mask dynamics during AC/DC training (paper Fig. 5b, Fig. 6, Table 8).

* ``mask_difference``: fraction of prunable weights whose kept/pruned status changed between two masks
  (XOR count / total weights). Note: this is normalised by *all* prunable weights, so two 90%-sparse masks
  can differ by at most 0.2 (every kept weight swapped).
* ``layer_density`` / ``zero_fraction``: per-layer kept or non-zero fractions; ``zero_fraction`` at the end
  of a dense phase measures the weights that stay exactly zero ("dead" filters, Table 8).
* ``MaskTracker``: small stateful helper a training loop calls at each compression. (The zeros left at the end of
  a dense phase are the loop's ``sparsity`` of that phase's last epoch, measured before the compression that ends
  it: ``dense_zero_fraction`` in ``metrics.jsonl``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from acdc.distributed.shards import global_counts, local
from acdc.masking import layer_zero_fractions, overall_zero_fraction
from acdc.targets import PRUNABLE_TYPES, prunable_parameters

__all__ = ["mask_difference", "layer_density", "zero_fraction", "prunable_weights", "MaskTracker"]


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{param_name: weight}`` of every Conv1d/2d/3d and Linear layer ({} when there is none).

    The default set of :func:`acdc.targets.prunable_parameters`, so the names are the training methods' mask
    keys (a tied tensor appears once, under its first parameter name).
    """
    if not any(isinstance(m, PRUNABLE_TYPES) for m in model.modules()):
        return {}
    return dict(prunable_parameters(model))


def _as_weights(x: Mapping[str, torch.Tensor] | nn.Module) -> Mapping[str, torch.Tensor]:
    return prunable_weights(x) if isinstance(x, nn.Module) else x


def mask_difference(
    prev: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], per_layer: bool = False
) -> float | tuple[float, dict[str, float]]:
    """Fraction of weights whose kept/pruned status differs between ``prev`` and ``new`` (XOR / total).

    Identical masks give 0, complementary masks 1. With ``per_layer=True`` returns ``(overall, {name: frac})``.
    Raises ValueError naming mismatched keys or shapes.
    """
    missing, extra = sorted(set(prev) - set(new)), sorted(set(new) - set(prev))
    if missing or extra:
        raise ValueError(f"mask keys differ: only in prev {missing}, only in new {extra}")
    bad = [f"{k}: {tuple(prev[k].shape)} vs {tuple(new[k].shape)}" for k in prev if prev[k].shape != new[k].shape]
    if bad:
        raise ValueError(f"mask shapes differ: {', '.join(bad)}")
    changed = total = 0
    layers: dict[str, float] = {}
    counts = []  # local XOR counts (this rank's rows of sharded masks), summed over ranks below
    for k in prev:
        a = local(prev[k]).detach().to(torch.bool)
        counts.append(int((a ^ local(new[k]).detach().to(device=a.device, dtype=torch.bool)).sum()))
    for k, c in zip(prev, global_counts(counts, prev)):
        n = prev[k].numel()
        changed += c
        total += n
        layers[k] = c / n if n else 0.0
    overall = changed / total if total else 0.0
    return (overall, layers) if per_layer else overall


def layer_density(masks_or_weights: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, float]:
    """Per-layer density: kept fraction of a bool mask, or non-zero fraction of a weight tensor.

    A model is read through :func:`prunable_weights`. The key ``"__overall__"`` is *not* added; use
    :func:`zero_fraction` for an overall number.
    """
    tensors = _as_weights(masks_or_weights)
    kept = [int(local(t).detach().sum()) if t.dtype == torch.bool else int((local(t).detach() != 0).sum())
            for t in tensors.values()]
    return {k: c / t.numel() if t.numel() else 0.0
            for (k, t), c in zip(tensors.items(), global_counts(kept, tensors))}


def zero_fraction(
    weights: Mapping[str, torch.Tensor] | nn.Module, per_layer: bool = True
) -> tuple[float, dict[str, float]] | float:
    """Fraction of weights exactly 0, overall (weighted by size) and per layer (paper Table 8).

    Returns ``(overall, {name: frac})``, or just ``overall`` when ``per_layer=False``. The numbers are those of
    :func:`acdc.masking.overall_zero_fraction` / :func:`acdc.masking.layer_zero_fractions` (what methods report).
    """
    w = _as_weights(weights)
    overall = overall_zero_fraction(w)
    return (overall, layer_zero_fractions(w)) if per_layer else overall


class MaskTracker:
    """Records mask changes between consecutive compressions.

    ``on_compress(epoch, masks)`` after each pruning step. ``history`` keeps every returned record (plain Python
    numbers, for logging).
    ``state_dict``/``load_state_dict`` keep the previous masks (CPU bool tensors) so a resumed run reports the
    right difference at its next compression.
    """

    def __init__(self) -> None:
        self.compressions = 0
        self.prev_masks: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []

    def on_compress(self, epoch: float, masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Record a new compression mask; ``mask_diff`` is None for the first one."""
        masks = {k: v.detach().to("cpu", torch.bool).clone() for k, v in masks.items()}
        if self.prev_masks is None:
            diff, diff_layers = None, {}
        else:
            diff, diff_layers = mask_difference(self.prev_masks, masks, per_layer=True)
        rec = {
            "compression": self.compressions,
            "epoch": float(epoch),
            "mask_diff": diff,
            "mask_diff_per_layer": diff_layers,
            "density_per_layer": layer_density(masks),
        }
        self.compressions += 1
        self.prev_masks = masks
        self.history.append(rec)
        return rec

    def state_dict(self) -> dict[str, Any]:
        return {
            "compressions": self.compressions,
            "prev_masks": None if self.prev_masks is None else dict(self.prev_masks),
            "history": list(self.history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.compressions = int(state["compressions"])
        pm = state.get("prev_masks")
        self.prev_masks = None if pm is None else {k: v.to("cpu", torch.bool) for k, v in pm.items()}
        self.history = list(state.get("history", []))
