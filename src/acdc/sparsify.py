"""The mechanism every sparse-training method shares: masks applied in place to weights, gradients and
optimizer state, and optimizer-state resets.

No forward hooks and no parametrizations (they break deepcopy, pickle and ``torch.compile`` and cost 10-13% per
step): masks are plain tensors. Gradients are masked by an optimizer *step pre-hook*, so optimizer state never
accumulates for pruned entries; with zeroed state and zero gradients, every ``torch.optim`` optimizer leaves a zero
weight at zero (SGD with momentum/Nesterov/weight decay, Adam, AdamW, RMSprop, Adagrad, ...). For optimizers
outside ``torch.optim`` the weights are also re-masked after each step (``mask_weights="auto"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

# torch.optim optimizers for which zero grad + zero state keeps a zero weight exactly zero.
_SAFE_OPTIMIZERS = {
    "SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "ASGD", "Rprop",
}


def optimizer_keeps_zeros(optimizer: torch.optim.Optimizer) -> bool:
    """True for built-in ``torch.optim`` optimizers, whose update of a zero weight with zero grad/state is 0."""
    cls = type(optimizer)
    return cls.__module__.startswith("torch.optim") and cls.__name__ in _SAFE_OPTIMIZERS


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: Mapping[str, torch.Tensor] | None = None) -> int:
    """Zero every state tensor (momentum buffers, Adam moments, step counters) of ``params`` (default: all).

    Zeroing in place (rather than deleting) keeps the state's structure, so it is equivalent to a freshly created
    optimizer for these parameters. Returns the number of tensors zeroed.
    """
    targets = None if params is None else {id(p) for p in params.values()}
    count = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if targets is not None and id(p) not in targets:
                continue
            state = optimizer.state.get(p)
            if not state:
                continue
            for k, v in list(state.items()):
                if torch.is_tensor(v):
                    v.zero_()
                    count += 1
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    state[k] = type(v)(0)
    return count


def zero_fraction(tensors: Mapping[str, torch.Tensor]) -> float:
    """Fraction of all elements of ``tensors`` that are exactly zero (0.0 when there are none)."""
    total = sum(t.numel() for t in tensors.values())
    zeros = sum(int((t.detach() == 0).sum()) for t in tensors.values())
    return zeros / total if total else 0.0


def layer_zero_fractions(tensors: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-tensor fraction of elements that are exactly zero."""
    return {n: float((t.detach() == 0).sum()) / t.numel() for n, t in tensors.items()}


def mask_optimizer_state(
    optimizer: torch.optim.Optimizer, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> None:
    """Zero the state entries (same shape as the parameter) of pruned positions, so stale momentum cannot move them."""
    for name, p in params.items():
        state = optimizer.state.get(p)
        if not state:
            continue
        m = masks[name]
        for v in state.values():
            if torch.is_tensor(v) and v.shape == p.shape:
                v.mul_(m.to(v.dtype))


class MaskedParams:
    """Holds the prunable parameters and the current masks; applies them in place.

    ``masks`` is ``None`` when the model is dense. Float copies of the masks (in each parameter's dtype) drive the
    hot-path multiplications, since multiplying by a bool tensor is 3.5-7x slower on CPU.
    """

    def __init__(self, params: Mapping[str, nn.Parameter]) -> None:
        self.params = dict(params)
        self.masks: dict[str, torch.Tensor] | None = None
        self._names: list[str] = []
        self._plist: list[torch.Tensor] = []
        self._fmasks: list[torch.Tensor] = []

    def numel(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.params.items()}

    @torch.no_grad()
    def set_masks(self, masks: Mapping[str, torch.Tensor] | None, apply: bool = True) -> None:
        """Install masks (bool, True = kept) and zero the pruned weights; ``None`` re-opens every weight."""
        if masks is None:
            self.masks = None
            self._names, self._plist, self._fmasks = [], [], []
            return
        missing = set(self.params) - set(masks)
        extra = set(masks) - set(self.params)
        if missing or extra:
            raise ValueError(f"masks do not match the prunable parameters: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        bm: dict[str, torch.Tensor] = {}
        for n, p in self.params.items():
            m = masks[n]
            if m.shape != p.shape:
                raise ValueError(f"mask for {n!r} has shape {tuple(m.shape)}, parameter has {tuple(p.shape)}")
            bm[n] = m.to(device=p.device, dtype=torch.bool)
        self.masks = bm
        # only layers with something pruned take part in the hot path
        self._names = [n for n in self.params if not bool(bm[n].all())]
        self._plist = [self.params[n] for n in self._names]
        self._fmasks = [bm[n].to(self.params[n].dtype) for n in self._names]
        if apply:
            self.apply_to_weights()

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        if self._plist:
            torch._foreach_mul_(self._plist, self._fmasks)

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        grads, fm = [], []
        for p, m in zip(self._plist, self._fmasks):
            if p.grad is not None:
                grads.append(p.grad)
                fm.append(m)
        if grads:
            torch._foreach_mul_(grads, fm)

    def sparsity(self) -> float:
        """Achieved sparsity: fraction of prunable weights that are exactly zero."""
        return zero_fraction(self.params)

    def layer_sparsity(self) -> dict[str, float]:
        return layer_zero_fractions(self.params)


class OptimizerHooks:
    """Registers step pre/post hooks on an optimizer; removable, so a controller can be detached cleanly."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        pre: Callable[[], None] | None,
        post: Callable[[], None] | None,
    ) -> None:
        self._handles = []
        if pre is not None:
            self._handles.append(optimizer.register_step_pre_hook(lambda opt, args, kwargs: pre()))
        if post is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: post()))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
