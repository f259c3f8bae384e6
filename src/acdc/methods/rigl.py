"""RigL (Evci et al. 2020): sparse from the start; periodically drop the smallest weights, grow by dense gradient.

:class:`DropGrow` holds the schedule and the drop/grow update shared with SET (:mod:`acdc.methods.set`), which
differs only in how it scores the positions to grow.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..masking import rekey
from ..selection import keep_count, random_masks, select_counts, topk_within
from .base import SharedOptions, SparseMethod
from .interval import StepInterval, check_every

if TYPE_CHECKING:
    from typing import Unpack


def rigl_epoch_flops(f_sparse: float, f_dense: float, delta_t_steps: int) -> float:
    """RigL training FLOPs per sample (Evci et al. 2020): ``(3 f_s ΔT + 2 f_s + f_d) / (ΔT + 1)``.

    Every ``ΔT`` steps one step also computes the dense gradient to grow connections.
    """
    if delta_t_steps < 0:
        raise ValueError(f"delta_t_steps must be >= 0, got {delta_t_steps}")
    return (3.0 * f_sparse * delta_t_steps + 2.0 * f_sparse + f_dense) / (delta_t_steps + 1)


class DropGrow(SparseMethod):
    """Fixed per-layer sparsity (shared ``distribution``: erk / uniform / global, the per-layer sparsities of the
    selection vocabulary, :mod:`acdc.selection`); every ``update_every`` steps while
    ``step < end_fraction * total_steps``, in each layer:

    - drop ``round(α_t · n_active)`` active weights of smallest |w|, α_t = α/2 · (1 + cos(π t / T_end))
      (``decay="constant"``: α_t = α);
    - grow as many positions among those not kept (a just-dropped weight may be regrown and keeps its value, as in
      the paper's Algorithm 1 and the reference code), by :meth:`_grow_scores`; new weights start at 0 with zero
      optimizer state.

    The update runs after the optimizer step of the update iteration (the reference skips that step instead).
    Initial masks: ``init="random"`` (the paper) or ``"magnitude"``. Ties: lowest index first.
    """

    name = "dropgrow"
    default_distribution = "erk"
    supports_nm = False
    _needs_grads = True  # capture |dense gradient| on update steps (RigL); SET grows at random

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sparsity: float,
        total_steps: int,
        update_every: int = 100,
        end_fraction: float = 0.75,
        alpha: float = 0.3,
        decay: str = "cosine",
        init: str = "random",
        seed: int = 0,
        **shared: Unpack[SharedOptions],
    ) -> None:
        super().__init__(model, optimizer, sparsity=sparsity, **shared)
        if decay not in ("cosine", "constant"):
            raise ValueError(f"{self.name}: decay must be 'cosine' or 'constant', got {decay!r}")
        if init not in ("random", "magnitude"):
            raise ValueError(f"{self.name}: init must be 'random' or 'magnitude', got {init!r}")
        check_every(update_every, self.name)
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= end_fraction <= 1.0:
            raise ValueError(f"{self.name}: alpha and end_fraction must be in [0, 1], got {alpha}, {end_fraction}")
        self.alpha, self.decay = float(alpha), decay
        self.interval = StepInterval(update_every, start=update_every, stop=int(round(end_fraction * total_steps)))
        self.generator = torch.Generator().manual_seed(int(seed))
        self.layer_target_sparsity = self.target.layer_sparsities(self.masked.params, self.target_sparsity)
        if init == "random":
            masks = random_masks(self.masked.params, self.layer_target_sparsity, self.generator)
        else:
            masks = select_counts(self.masked.weights(), {n: keep_count(p.numel(), self.layer_target_sparsity[n])
                                                          for n, p in self.masked.params.items()})
        self._install_masks(masks)
        self._dense_grads: dict[str, torch.Tensor] = {}
        self._capture_handles: list = []
        self._stepped = False
        self._emit("compress", masks=masks)
        self._arm()

    # ------------------------------------------------------------------ schedule
    @property
    def update_every(self) -> int:
        return self.interval.every

    @property
    def end_step(self) -> int:
        return self.interval.stop

    def is_update_step(self, step: int) -> bool:
        return self.interval.is_due(step)

    def drop_fraction(self, step: int) -> float:
        if self.decay == "constant":
            return self.alpha
        return self.alpha / 2 * (1 + math.cos(math.pi * step / self.end_step))

    # ------------------------------------------------------------------ dense-gradient capture
    def _arm(self) -> None:
        """Before an update step, record the *dense* gradient as backward produces it (the masking hooks then zero
        its pruned entries in ``.grad``): a tensor hook on each weight sees every backward's raw gradient before
        accumulation, and sums them like ``.grad`` would (restarting when ``.grad`` was reset by ``zero_grad``)."""
        for h in self._capture_handles:
            h.remove()
        self._capture_handles, self._dense_grads, self._stepped = [], {}, False
        if self._needs_grads and self.is_update_step(self.steps + 1):
            self._capture_handles = [p.register_hook(self._capture_hook(n, p)) for n, p in self.masked.params.items()]

    def _capture_hook(self, name: str, param: torch.Tensor):
        def hook(grad: torch.Tensor) -> None:
            with torch.no_grad():
                fresh = param.grad is None or not bool(param.grad.any())  # zero_grad()'s two forms
                acc = self._dense_grads.get(name)
                if fresh or acc is None:
                    self._dense_grads[name] = grad.detach().clone()
                else:
                    acc.add_(grad.detach())

        return hook

    def _post_step(self) -> None:
        self._stepped = True
        super()._post_step()

    def remove_hooks(self) -> None:
        super().remove_hooks()
        for h in self._capture_handles:
            h.remove()
        self._capture_handles = []

    def _average_dense_grads(self) -> None:
        """Under DDP (``grad_group``), average the captured dense gradients over the ranks — they were captured
        before DDP's all-reduce — so every rank grows the same positions (one all-reduce per update step)."""
        if self.grad_group is None or not self._dense_grads:
            return
        import torch.distributed as dist

        names = sorted(self._dense_grads)
        flat = torch.cat([self._dense_grads[n].reshape(-1) for n in names])
        dist.all_reduce(flat, group=self.grad_group)
        flat.div_(dist.get_world_size(self.grad_group))
        for n, part in zip(names, flat.split([self._dense_grads[n].numel() for n in names])):
            self._dense_grads[n] = part.view_as(self._dense_grads[n])

    def _grow_scores(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """Higher = grown first. RigL: |dense gradient| of the update step (summed over its micro-batches; under
        ``step(closure)``, the last evaluation's)."""
        g = self._dense_grads.get(name)
        return torch.zeros_like(param) if g is None else g.abs()

    def step(self) -> None:
        super().step()
        self._arm()

    @torch.no_grad()
    def _on_step(self) -> None:
        if not self.is_update_step(self.steps):
            return
        if self._needs_grads and not (self._stepped and self._dense_grads):  # step skipped (e.g. AMP overflow)
            self._emit("update_skipped", reason="no dense gradient captured")
            return
        self._average_dense_grads()
        frac = self.drop_fraction(self.steps)
        old = self.masked.masks
        assert old is not None
        new, dropped, grown = {}, 0, 0
        for n, p in self.masked.params.items():
            m = old[n]
            n_active = int(m.sum())
            n_drop = int(round(frac * n_active))
            keep = topk_within({n: p.detach()}, {n: m}, n_active - n_drop)[n]
            grow = topk_within({n: self._grow_scores(n, p)}, {n: ~keep}, n_drop)[n]
            new[n] = keep | grow
            dropped += int((m & ~new[n]).sum())
            grown += int((new[n] & ~m).sum())
        self._dense_grads = {}
        # a newly grown position had weight 0 and (being pruned) zero state; zero it again to be explicit
        self._install_masks(new, {n: new[n] & old[n] for n in new})
        self._emit("update", drop_fraction=frac, dropped=dropped, grown=grown, masks=new)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd.update(generator=self.generator.get_state(), layer_sparsity=dict(self.layer_target_sparsity))
        return sd

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
        if "layer_sparsity" in state:
            self.layer_target_sparsity = rekey(state["layer_sparsity"], self.masked.params, "layer_sparsity")
        self._arm()


class RigL(DropGrow):
    """RigL: grow the inactive positions with the largest dense-gradient magnitude (read only on update steps)."""

    name = "rigl"

    def training_flops_per_sample(self, current_flops_per_sample: float,
                                  dense_flops_per_sample: float) -> float:
        """Training FLOPs per sample of the epoch just trained (the RigL paper's convention).

        While drop/grow updates happen (steps before ``end_fraction * total_steps``) every ``ΔT = update_every``
        steps one step also computes the dense gradient: ``(3 f_s ΔT + 2 f_s + f_d) / (ΔT + 1)``; afterwards a
        step costs ``3 f_s``. An epoch straddling the end of updates is weighted by the fraction of its steps
        before it. The training loop calls this after the epoch's training, before the epoch's last
        :meth:`step`, so ``steps // steps_per_epoch`` is the epoch's index.
        """
        f_current, f_dense = current_flops_per_sample, dense_flops_per_sample
        updating = rigl_epoch_flops(f_current, f_dense, self.update_every)
        static = 3.0 * f_current
        spe = self.steps_per_epoch
        if not spe:  # stepped once per epoch: this epoch updates iff it is before the end
            return updating if self.steps < self.end_step else static
        start = (self.steps // spe) * spe
        frac = min(1.0, max(0.0, (self.end_step - start) / spe))
        return frac * updating + (1.0 - frac) * static
