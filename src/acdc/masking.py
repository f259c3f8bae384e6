"""The mechanism every sparse-training method shares: masks applied in place to weights, gradients and
optimizer state, and optimizer-state resets.

No forward hooks and no parametrizations (they break deepcopy, pickle and ``torch.compile`` and cost 10-13% per
step): masks are plain tensors. Gradients are masked *as autograd produces them*: a
``Tensor.register_post_accumulate_grad_hook`` on each parameter with pruned entries multiplies its ``.grad`` by a
float mask right after each backward's accumulation. So between ``backward()`` and ``step()`` the gradients are
already those of the sparse model (``clip_grad_norm_``, gradient logging and any step style — plain,
``step(closure)``, LBFGS's repeated closures — see masked gradients), accumulation over micro-batches stays masked
(``(g1·m + g2)·m = (g1 + g2)·m``), and optimizer state never accumulates for pruned entries. With zeroed state and
zero gradients every ``torch.optim`` optimizer in :data:`_SAFE_OPTIMIZERS` leaves a zero weight at zero (SGD with
momentum/Nesterov/weight decay, Adam, AdamW, RMSprop, Adagrad, ...); for others (LBFGS, optimizers outside
``torch.optim``) the weights are also re-masked after each step (``mask_weights="auto"``).

FSDP2 (``fully_shard``): parameters, gradients and optimizer state are DTensors sharded on dim 0; masks are bool
DTensors placed like their parameter (see :mod:`acdc.distributed.shards`). Every in-place multiply here works on
the local shards (``to_local()`` under ``no_grad``), and every count is summed over ranks explicitly. FSDP2 calls a
sharded parameter's post-accumulate-grad hooks after its reduce-scatter, with the sharded DTensor gradient. FSDP2
keeps the root module unsharded after a forward without backward (evaluation): call ``model.reshard()`` before
masks change, or the next forward reuses the old gathered weights.

Extension point: :meth:`MaskedParams._grad_hook` builds the per-parameter hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .distributed.shards import global_counts, is_dtensor, local
from .distributed.shards import shard_like as _shard_like

# torch.optim optimizers for which zero grad + zero state keeps a zero weight exactly zero.
_SAFE_OPTIMIZERS = {
    "SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "ASGD", "Rprop",
}


def unwrap_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """The torch optimizer whose ``step`` hooks to use: wrappers that hold the real optimizer as ``.optimizer``
    (HF/accelerate's ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``) are unwrapped (duck-typed, no
    import); a ``torch.optim.Optimizer`` is returned as is. Raises ``TypeError`` for anything else."""
    opt = optimizer
    for _ in range(8):
        inner = getattr(opt, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not opt:
            opt = inner
            continue
        break
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (or a wrapper exposing one as .optimizer), "
                        f"got {type(optimizer).__name__}")
    return opt


def state_owner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds the per-parameter state: ``ZeroRedundancyOptimizer`` keeps it in its local
    ``.optim`` (this rank's shard), every plain optimizer in itself."""
    opt = unwrap_optimizer(optimizer)
    inner = getattr(opt, "optim", None)
    return inner if isinstance(inner, torch.optim.Optimizer) and inner is not opt else opt


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``) wrappers, so
    parameter names — and the masks keyed by them — are the same wrapped or not."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    for _ in range(8):
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch._dynamo OptimizedModule
            model = model._orig_mod
        else:
            break
    return model


_WRAPPER_SEGMENTS = ("_orig_mod",)


def canonical_name(name: str) -> str:
    """``name`` without wrapper segments: a leading ``module.`` (DDP/DataParallel) and any ``_orig_mod.``."""
    while name.startswith("module."):
        name = name[len("module."):]
    return ".".join(s for s in name.split(".") if s not in _WRAPPER_SEGMENTS)


def rekey(saved: Mapping[str, object], names: Iterable[str], what: str = "masks",
          aliases: Mapping[str, str] | None = None) -> dict[str, object]:
    """Map ``saved`` (keyed by names from a wrapped or unwrapped model, or by another name of a tied weight:
    ``aliases`` maps each name to the one used here) onto ``names``; raises naming the keys that match nothing."""
    names = list(names)
    if set(saved) == set(names):
        return dict(saved)
    by_canon = {canonical_name(n): n for n in names}
    for a, n in (aliases or {}).items():
        by_canon.setdefault(canonical_name(a), n)
    out, unknown = {}, []
    for k, v in saved.items():
        target = k if k in names else by_canon.get(canonical_name(k))
        if target is None:
            unknown.append(k)
        else:
            out[target] = v
    if unknown:
        raise ValueError(f"{what} for unknown parameters {sorted(unknown)[:5]}; this model's prunable parameters "
                         f"are {names[:5]}{' ...' if len(names) > 5 else ''}")
    return out


def optimizer_keeps_zeros(optimizer: torch.optim.Optimizer) -> bool:
    """True for built-in ``torch.optim`` optimizers, whose update of a zero weight with zero grad/state is 0."""
    cls = type(state_owner(optimizer))
    return cls.__module__.startswith("torch.optim") and cls.__name__ in _SAFE_OPTIMIZERS


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: Mapping[str, torch.Tensor] | None = None) -> int:
    """Zero every state tensor (momentum buffers, Adam moments, step counters) of ``params`` (default: all).

    Zeroing in place (rather than deleting) keeps the state's structure, so it is equivalent to a freshly created
    optimizer for these parameters. Returns the number of tensors zeroed.
    """
    optimizer = state_owner(optimizer)
    targets = None if params is None else {id(p) for p in params.values()}
    count = 0
    for p, state in list(optimizer.state.items()):
        if not state or (targets is not None and id(p) not in targets):
            continue
        if torch.is_tensor(p) and not _is_elementwise(state, p):  # LBFGS: zeroed lists/scales are not "fresh"
            count += sum(1 for v in state.values() if torch.is_tensor(v))
            state.clear()
            continue
        for k, v in list(state.items()):
            if torch.is_tensor(v):
                local(v).zero_()
                count += 1
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                state[k] = type(v)(0)
    return count


def overall_zero_fraction(tensors: Mapping[str, torch.Tensor]) -> float:
    """Fraction of all elements of ``tensors`` that are exactly zero (0.0 when there are none)."""
    total = sum(t.numel() for t in tensors.values())  # global shape under FSDP
    zeros = sum(global_counts([int((local(t).detach() == 0).sum()) for t in tensors.values()], tensors))
    return zeros / total if total else 0.0


def layer_zero_fractions(tensors: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-tensor fraction of elements that are exactly zero (0.0 for an empty tensor)."""
    zeros = global_counts([int((local(t).detach() == 0).sum()) for t in tensors.values()], tensors)
    return {n: z / t.numel() if t.numel() else 0.0 for (n, t), z in zip(tensors.items(), zeros)}


def kept_counts(masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Per-tensor number of kept (True) entries of bool masks, summed over ranks for sharded masks."""
    kept = global_counts([int(local(m).sum()) for m in masks.values()], masks)
    return dict(zip(masks, kept))


def _is_elementwise(state: Mapping, p: torch.Tensor) -> bool:
    """True when every tensor of ``state`` is the parameter's shape or a scalar (SGD, Adam, ...); False for state
    that mixes entries (LBFGS's flat history lists, factored second moments)."""
    for v in state.values():
        if isinstance(v, (list, tuple)):
            return False
        if torch.is_tensor(v) and v.numel() > 1 and v.shape != p.shape:
            return False
    return True


def mask_optimizer_state(
    optimizer: torch.optim.Optimizer, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> None:
    """Zero the state entries (same shape as the parameter) of pruned positions, so stale momentum cannot move them.

    State that cannot be masked entry-wise (LBFGS keeps one flat curvature history for all parameters) is cleared:
    after a mask change it describes a different problem, and a cleared state is a freshly built optimizer's.
    """
    optimizer = state_owner(optimizer)
    prunable = {id(p) for p in params.values()}
    for p, state in list(optimizer.state.items()):
        if not state or not torch.is_tensor(p):
            continue
        flat_history = any(isinstance(v, (list, tuple)) for v in state.values())  # LBFGS: keyed on params[0]
        if flat_history or (id(p) in prunable and not _is_elementwise(state, p)):
            state.clear()
    for name, p in params.items():
        state = optimizer.state.get(p)
        if not state:
            continue
        m = masks[name]
        for v in state.values():
            if torch.is_tensor(v) and v.shape == p.shape:
                local(v).mul_(local(m).to(v.dtype))


class MaskedParams:
    """Holds the prunable parameters and the current masks; applies them in place.

    ``masks`` is ``None`` when the model is dense. ``grad_masks`` (default: the masks) restrict gradients; they may
    be larger than the masks (Top-KAST trains a backward set B ⊇ A). Float copies of the masks (in each
    parameter's dtype) drive the hot-path multiplications, since multiplying by a bool tensor is 3.5-7x slower on
    CPU. Only parameters with something pruned take part: they get a post-accumulate-grad hook; a dense model runs
    no Python code per backward.
    """

    def __init__(self, params: Mapping[str, nn.Parameter]) -> None:
        self.params = dict(params)
        self.masks: dict[str, torch.Tensor] | None = None
        self.grad_masks: dict[str, torch.Tensor] | None = None
        self._names: list[str] = []
        self._plist: list[torch.Tensor] = []
        self._fmasks: list[torch.Tensor] = []
        self._grad_fmasks: dict[str, torch.Tensor] = {}
        self._grad_handles: list = []
        self.hooks_enabled = True

    def numel(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.params.items()}

    def _check(self, masks: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
        missing = set(self.params) - set(masks)
        extra = set(masks) - set(self.params)
        if missing or extra:
            raise ValueError(f"{what} do not match the prunable parameters: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        out: dict[str, torch.Tensor] = {}
        for n, p in self.params.items():
            m = masks[n]
            if m.shape != p.shape:
                raise ValueError(f"mask for {n!r} has shape {tuple(m.shape)}, parameter has {tuple(p.shape)}")
            out[n] = _shard_like(m.to(device=p.device, dtype=torch.bool), p)
        return out

    @torch.no_grad()
    def set_masks(self, masks: Mapping[str, torch.Tensor] | None, apply: bool = True,
                  grad_masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Install masks (bool, True = kept) and zero the pruned weights; ``None`` re-opens every weight.

        ``grad_masks`` (default ``masks``) is what the gradient hooks keep; it must contain ``masks``.
        """
        if masks is None:
            self.masks = self.grad_masks = None
            self._names, self._plist, self._fmasks, self._grad_fmasks = [], [], [], {}
            self._sync_grad_hooks()
            return
        bm = self._check(masks, "masks")
        gm = bm if grad_masks is None else self._check(grad_masks, "grad_masks")
        self.masks, self.grad_masks = bm, gm
        # only layers with something pruned (in this rank's shard, under FSDP) take part in the hot path; the float
        # masks are local tensors, multiplied into local shards
        self._names = [n for n in self.params if not bool(local(bm[n]).all())]
        self._plist = [self.params[n] for n in self._names]
        self._fmasks = [local(bm[n]).to(self.params[n].dtype) for n in self._names]
        fm = dict(zip(self._names, self._fmasks))
        self._grad_fmasks = {n: fm[n] if gm is bm else local(gm[n]).to(self.params[n].dtype)
                             for n in self.params if not bool(local(gm[n]).all())}
        self._sync_grad_hooks()
        if apply:
            self.apply_to_weights()

    # ------------------------------------------------------------------ gradient hooks
    def _grad_hook(self, name: str, fmask: torch.Tensor) -> Callable[[torch.Tensor], None]:
        """The hook masking ``name``'s accumulated gradient (``fmask``: float mask of the local shard)."""
        if is_dtensor(self.params[name]):
            def sharded_hook(p: torch.Tensor) -> None:  # FSDP2: after the reduce-scatter, on the sharded grad
                with torch.no_grad():
                    p.grad.to_local().mul_(fmask)

            return sharded_hook

        def hook(p: torch.Tensor) -> None:
            p.grad.mul_(fmask)

        return hook

    def _sync_grad_hooks(self) -> None:
        for h in self._grad_handles:
            h.remove()
        self._grad_handles = []
        if not self.hooks_enabled:
            return
        for n, fm in self._grad_fmasks.items():
            self._grad_handles.append(self.params[n].register_post_accumulate_grad_hook(self._grad_hook(n, fm)))

    def enable_grad_hooks(self, enabled: bool) -> None:
        """Attach (True) or detach (False) the gradient hooks; masks stay installed either way."""
        self.hooks_enabled = enabled
        self._sync_grad_hooks()

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        if self._plist:
            torch._foreach_mul_([local(p) for p in self._plist], self._fmasks)

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        """Mask the current ``.grad`` of every parameter (for gradients set by hand; backward is masked already)."""
        grads, fm = [], []
        for n, m in self._grad_fmasks.items():
            g = self.params[n].grad
            if g is not None:
                grads.append(local(g))
                fm.append(m)
        if grads:
            torch._foreach_mul_(grads, fm)

    def sparsity(self) -> float:
        """Achieved sparsity: fraction of prunable weights that are exactly zero."""
        return overall_zero_fraction(self.params)

    def layer_sparsity(self) -> dict[str, float]:
        return layer_zero_fractions(self.params)


StepPreHook = Callable[[tuple, dict], "tuple[tuple, dict] | None"]


class OptimizerHooks:
    """Registers step pre/post hooks on an optimizer; removable, so a controller can be detached cleanly.

    ``pre(args, kwargs)`` gets the step's arguments as torch passes them to pre-hooks (``args[0]`` is the optimizer)
    and may return replaced ``(args, kwargs)`` (e.g. a wrapped closure).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        pre: StepPreHook | None,
        post: Callable[[], None] | None,
    ) -> None:
        self._handles = []
        if pre is not None:
            self._handles.append(optimizer.register_step_pre_hook(lambda opt, args, kwargs: pre(args, kwargs)))
        if post is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: post()))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
