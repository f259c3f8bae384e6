"""Gradual magnitude pruning (Zhu & Gupta 2017): a cubic sparsity ramp, then fine-tuning at the final mask."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..masks import check_sparsity
from .base import SharedOptions, SparseMethod
from .interval import StepInterval, check_every

if TYPE_CHECKING:
    from typing import Unpack


class GMP(SparseMethod):
    """Prune by magnitude every ``update_every`` steps from ``start_step`` to ``end_step`` following

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3      (t0 <= t <= t_end)

    (dense before ``t0``, ``s_f`` after), then keep the final mask to the end of training. Prune steps are
    ``t0, t0 + Δt, ...`` and ``t_end`` itself. Masks only shrink: the top-k is taken among the currently kept
    weights (pruned ones are 0 anyway), through the shared selection (``distribution``: ``global``, one top-k over
    all layers; ``uniform``; ``erk``). N:M has no gradual ramp (use ``oneshot``).
    """

    name = "gmp"
    supports_nm = False

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sparsity: float,
        start_step: int,
        end_step: int,
        update_every: int,
        initial_sparsity: float = 0.0,
        **shared: Unpack[SharedOptions],
    ) -> None:
        super().__init__(model, optimizer, sparsity=sparsity, **shared)
        check_every(update_every, "gmp")
        if not (0 <= start_step <= end_step):
            raise ValueError(f"gmp: need 0 <= start_step <= end_step, got {start_step}, {end_step}")
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
        if self.initial_sparsity > self.target_sparsity:
            raise ValueError(f"gmp: initial_sparsity {initial_sparsity} exceeds the final sparsity {sparsity}")
        self.interval = StepInterval(update_every, int(start_step), int(end_step), final=True)
        self._maybe_prune()

    def sparsity_at(self, step: int) -> float:
        """Scheduled sparsity at optimizer step ``step`` (0 before the ramp starts)."""
        t0, t1, si, sf = self.start_step, self.end_step, self.initial_sparsity, self.target_sparsity
        if step < t0:
            return 0.0
        if step >= t1:
            return sf
        return sf + (si - sf) * (1.0 - (step - t0) / (t1 - t0)) ** 3

    @property
    def start_step(self) -> int:
        return self.interval.start

    @property
    def end_step(self) -> int:
        return self.interval.stop

    @property
    def update_every(self) -> int:
        return self.interval.every

    def is_prune_step(self, step: int) -> bool:
        return self.interval.is_due(step)

    @torch.no_grad()
    def _maybe_prune(self) -> None:
        if not self.is_prune_step(self.steps):
            return
        s = self.sparsity_at(self.steps)
        masks = self.target.compute(self.masked.weights(), s, allowed=self.masked.masks)
        self._install_masks(masks)
        self._emit("update", sparsity=s, masks=masks)

    def _on_step(self) -> None:
        self._maybe_prune()

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd.update(start_step=self.start_step, end_step=self.end_step, update_every=self.update_every,
                  initial_sparsity=self.initial_sparsity, sparsity=self.target_sparsity)
        return sd
