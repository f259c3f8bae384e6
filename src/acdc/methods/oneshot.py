"""One-shot magnitude pruning of a trained dense model, then fine-tuning at the fixed mask."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..targets import Target
from .base import SparseMethod


class OneShot(SparseMethod):
    """Prune ``model`` once at construction (``target``: global / uniform magnitude or N:M) and keep the mask.

    The model is taken as given: loading trained weights (the recipe's ``from_checkpoint``) is the loop's job.
    """

    name = "oneshot"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sparsity: float,
        steps_per_epoch: int | None = None,
        target: str | Target = "global",
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        mask_weights: bool | str = "auto",
        auto_step: bool = False,
    ) -> None:
        super().__init__(model, optimizer, sparsity=sparsity, steps_per_epoch=steps_per_epoch, target=target,
                         include=include, exclude=exclude, mask_weights=mask_weights, auto_step=auto_step)
        masks = self.target.compute(self.masked.weights(), self.sparsity_target)
        self._install_masks(masks)
        self._emit("compress", masks=masks)
