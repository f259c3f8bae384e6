"""Top-KAST (Jayakumar et al. 2020): sparse forward set A, larger backward set B ⊇ A, dense parameters kept."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..masking import mask_optimizer_state, rekey
from ..masks import check_sparsity
from .base import SharedOptions, SparseMethod
from .interval import StepInterval, check_every

if TYPE_CHECKING:
    from typing import Unpack


def topkast_epoch_flops(f_forward: float, f_backward: float) -> float:
    """Top-KAST training FLOPs per sample: ``f_fwd`` (forward) + ``f_fwd`` (error back-propagation through the
    forward-sparse weights) + ``f_bwd`` (weight gradients for the larger backward set)."""
    return 2.0 * f_forward + f_backward


class TopKAST(SparseMethod):
    """Top-KAST over the full parameters θ (kept dense, as in the paper):

    - forward: the model's weights hold θ ⊙ A, A = top-k of |θ| at ``sparsity``; the values outside A live in a
      *stash* (one dense tensor per layer, θ ⊙ ¬A) — no forward hooks;
    - gradients are masked to B (top-k of |θ| at ``backward_sparsity``) as backward produces them (so clipping and
      logging see the trained set's gradients);
    - right before the update (step pre-hook; after each evaluation under ``step(closure)``): restore θ from the
      stash and add the exploration penalty gradient (λ/D)·θ on B \\ A (D = forward density, i.e. the loss term
      λ/(2D)·Σ_{B\\A} θ²; A gets the optimizer's own weight decay only). Under ``step(closure)`` each evaluation's
      forward runs on θ ⊙ A again;
    - post-step hook: weights outside B are put back to their stashed values (so optimizer weight decay cannot
      move them: only B is trained), the stash is refreshed and the weights outside A zeroed again;
    - every ``update_every`` steps A and B are recomputed from |θ| through the shared selection (``distribution``:
      uniform per layer as in the paper, global or erk); optimizer state is zeroed for positions leaving or
      entering B.

    Memory: one stash tensor per prunable weight. A ⊆ B always (same ranking, same tie-break).
    """

    name = "topkast"
    default_distribution = "uniform"
    supports_nm = False

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sparsity: float,
        backward_sparsity: float | None = None,
        update_every: int = 100,
        l2: float = 1e-4,
        **shared: Unpack[SharedOptions],
    ) -> None:
        super().__init__(model, optimizer, sparsity=sparsity, **shared)
        if backward_sparsity is None:
            backward_sparsity = max(0.0, self.target_sparsity - 0.1)
        self.backward_sparsity = check_sparsity(backward_sparsity, "backward_sparsity")
        if self.backward_sparsity > self.target_sparsity:
            raise ValueError(f"topkast: backward_sparsity {backward_sparsity} must be <= sparsity {sparsity}")
        self.interval = StepInterval(check_every(update_every, "topkast"), start=update_every)
        self.l2 = float(l2)
        self.stash = {n: torch.zeros_like(p) for n, p in self.masked.params.items()}
        self.bmasks: dict[str, torch.Tensor] = {}
        self._refresh()

    @torch.no_grad()
    def _theta(self) -> dict[str, torch.Tensor]:
        """The full parameters θ: kept weights from the model, the rest from the stash."""
        a = self.masked.masks
        if a is None:
            return self.masked.weights()
        return {n: torch.where(a[n], p.detach(), self.stash[n]) for n, p in self.masked.params.items()}

    @torch.no_grad()
    def _refresh(self) -> None:
        self._pristine_begin()
        theta = self._theta()
        fwd = self.target.compute(theta, self.target_sparsity)
        bwd = self.target.compute(theta, self.backward_sparsity)
        bwd = {n: bwd[n] | fwd[n] for n in bwd}  # nested already (same ranking and tie-break); made explicit
        prev = self.bmasks  # empty at the first refresh
        # zero the state outside B and, after the first refresh, of positions entering B
        mask_optimizer_state(self.optimizer, self.masked.params, {n: bwd[n] & prev[n] for n in bwd} if prev else bwd)
        self.bmasks = bwd
        for n, p in self.masked.params.items():
            self.stash[n].copy_(theta[n].masked_fill(fwd[n], 0))
            p.copy_(theta[n].masked_fill(~fwd[n], 0))
        self.masked.set_masks(fwd, apply=False, grad_masks=bwd)
        self._theta_in_weights = False
        self._cache_step_masks()
        self._pristine_end()
        self._emit("update", masks=fwd, backward_masks=bwd)

    def _cache_step_masks(self) -> None:
        """Derive, once per mask change, what the step hooks use: B as float multipliers and ¬A."""
        self._fb = {n: m.to(self.masked.params[n].dtype) for n, m in self.bmasks.items()}
        self._outside_a = {n: ~m for n, m in self.masked.masks.items()}
        self._theta_in_weights = False

    @property
    def update_every(self) -> int:
        return self.interval.every

    @property
    def backward_masks(self) -> dict[str, torch.Tensor]:
        return self.bmasks

    @property
    def forward_density(self) -> float:
        return 1.0 - self.target_sparsity

    def training_flops_per_sample(self, current_flops_per_sample: float,
                                  dense_flops_per_sample: float) -> float:
        """Training FLOPs per sample: ``f_A + f_A + f_B`` (forward and error back-propagation through the forward
        set A, weight gradients for the backward set B), :func:`topkast_epoch_flops`.

        ``f_current`` is the measured inference cost at A's density ``d_A``. ``f_B`` is interpolated linearly
        between ``(d_A, f_current)`` and ``(1, f_dense)`` at ``d_B = 1 - backward_sparsity``: exact for the
        ``uniform`` target (FLOPs are affine in a common layer density), an approximation for ``global``.
        """
        f_current, f_dense = current_flops_per_sample, dense_flops_per_sample
        d_a, d_b = 1.0 - self.target_sparsity, 1.0 - self.backward_sparsity
        f_b = f_current if d_a >= 1.0 else f_current + (f_dense - f_current) * (d_b - d_a) / (1.0 - d_a)
        return topkast_epoch_flops(f_current, f_b)

    # ------------------------------------------------------------------ hooks
    @torch.no_grad()
    def _before_closure(self) -> None:
        """Under ``step(closure)``: a re-evaluation (LBFGS line search) starts from θ; forward runs on θ ⊙ A."""
        if not self._theta_in_weights:
            return
        a = self.masked.masks
        assert a is not None
        for n, p in self.masked.params.items():
            self.stash[n].copy_(p.masked_fill(a[n], 0))
            p.masked_fill_(self._outside_a[n], 0)
        self._theta_in_weights = False

    @torch.no_grad()
    def _before_update(self) -> None:
        a = self.masked.masks
        assert a is not None
        coef = self.l2 / self.forward_density
        for n, p in self.masked.params.items():
            p.copy_(torch.where(a[n], p, self.stash[n]))  # θ, so the update sees the full parameter
            if coef and p.grad is not None:
                p.grad.addcmul_(self.stash[n], self._fb[n], value=coef)  # stash·B = θ on B \ A
        self._theta_in_weights = True

    @torch.no_grad()
    def _post_step(self) -> None:
        a = self.masked.masks
        assert a is not None
        for n, p in self.masked.params.items():
            p.copy_(torch.where(self.bmasks[n], p, self.stash[n]))  # outside B: unchanged
            self.stash[n].copy_(p.masked_fill(a[n], 0))
            p.masked_fill_(self._outside_a[n], 0)
        self._theta_in_weights = False
        if self.auto_step:
            self.step()

    def _on_step(self) -> None:
        if self.interval.is_due(self.steps):
            self._refresh()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd.update(stash={n: t.clone() for n, t in self.stash.items()},
                  backward_masks={n: m.clone() for n, m in self.bmasks.items()},
                  sparsity=self.target_sparsity, backward_sparsity=self.backward_sparsity)
        return sd

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            for n, t in rekey(state["stash"], self.stash, "stash").items():
                self.stash[n].copy_(t)
        self.bmasks = {n: m.to(device=self.masked.params[n].device, dtype=torch.bool)
                       for n, m in rekey(state["backward_masks"], self.masked.params, "backward_masks").items()}
        self.masked.set_masks(self.masked.masks, apply=False, grad_masks=self.bmasks)
        self._cache_step_masks()
