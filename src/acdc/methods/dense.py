"""The dense baseline: no masks ever; present so every method runs through the same training loop."""

from __future__ import annotations

import torch
from torch import nn

from .base import SparseMethod


class Dense(SparseMethod):
    """Plain dense training (reports the prunable weights' natural sparsity, normally 0)."""

    name = "dense"
    yields_sparse = False
    yields_dense = True
    selects_positions = False

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int | None = None,
                 include=None, exclude=None, **_: object) -> None:
        super().__init__(model, optimizer, sparsity=0.0, steps_per_epoch=steps_per_epoch, include=include,
                         exclude=exclude)
