"""AC/DC: alternate dense (decompressed) and sparse (compressed) phases on one network (paper, section 3.2)."""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..masking import reset_optimizer_state
from ..schedule import SPARSE, Schedule
from .base import SharedOptions, SparseMethod

if TYPE_CHECKING:
    from typing import Unpack


class ACDC(SparseMethod):
    """AC/DC controller for any model and any ``torch.optim`` optimizer.

    - At each sparse-phase start: a fresh top-k over *all* prunable weights (``structure`` × ``distribution``:
      global magnitude, uniform or ERK per layer, or N:M); pruned weights are zeroed, their optimizer state too.
    - During a sparse phase: pruned weights stay exactly 0 and get zero gradients (optimizer step pre-hook).
    - At each dense-phase start: every weight re-opens (pruned ones restart at 0) and the optimizer state
      (momentum buffers, Adam moments, step counts) of all parameters is reset to zero.

    Time: ``t = steps / steps_per_epoch`` epochs; with ``steps_per_epoch=None``, call :meth:`step` once per epoch.
    Shared options (``steps_per_epoch``, ``structure``, ``distribution``, ``include``, ...): :class:`SharedOptions`.
    """

    name = "acdc"
    yields_dense = True
    has_dense_finetune = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sparsity: float,
        schedule: Schedule,
        reset_optimizer: bool = True,
        **shared: Unpack[SharedOptions],
    ) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be an acdc.Schedule, got {type(schedule).__name__}")
        super().__init__(model, optimizer, sparsity=sparsity, **shared)
        self.schedule = schedule
        self.reset_optimizer = reset_optimizer
        self.compressions = 0
        self._phase_idx = schedule.phase_index(0.0)
        if schedule.timeline()[self._phase_idx].kind == SPARSE:
            self._compress()

    # ------------------------------------------------------------------ transitions
    @torch.no_grad()
    def _compress(self) -> None:
        masks = self.target.compute(self.masked.weights(), self.target_sparsity)
        self._install_masks(masks)
        self.compressions += 1
        self._emit("compress", masks=masks, compression=self.compressions)

    @torch.no_grad()
    def _decompress(self) -> None:
        self.masked.set_masks(None)
        if self.reset_optimizer:
            reset_optimizer_state(self.optimizer)
        self._emit("decompress")

    def _on_step(self) -> None:
        idx = self.schedule.phase_index(self.exact_epoch)
        if idx != self._phase_idx:
            self._phase_idx = idx
            if self.schedule.timeline()[idx].kind == SPARSE:
                self._compress()
            else:
                self._decompress()

    @property
    def exact_epoch(self) -> Fraction:
        """Training time as an exact fraction of epochs (what the schedule is compared against)."""
        return Fraction(self.steps, self.steps_per_epoch or 1)

    @property
    def scheduled_phase(self) -> str:
        """The schedule's phase at the current time (equals :attr:`phase`)."""
        return self.schedule.timeline()[self._phase_idx].kind

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd.update(phase_index=self._phase_idx, compressions=self.compressions, schedule=self.schedule.to_dict(),
                  sparsity=self.target_sparsity)
        return sd

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "schedule" in state:
            saved = Schedule.from_phases(state["schedule"]["phases"])
            if saved != self.schedule:
                raise ValueError("ACDC.load_state_dict: the checkpoint was made with a different schedule "
                                 f"({saved.describe()}); rebuild the controller with that schedule")
        super().load_state_dict(state)
        self._phase_idx = int(state["phase_index"])
        self.compressions = int(state.get("compressions", 0))
