"""Base class of every sparse-training method: owns the prunable parameters, the masks and the optimizer hooks.

A method decides *when* masks change and *how* they are scored; the mechanism (masking weights, gradients and
optimizer state in place) lives in :mod:`acdc.masking`. Use in any plain training loop::

    method = SomeMethod(model, optimizer, sparsity=0.9, steps_per_epoch=len(loader))
    for x, y in loader:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
        method.step()            # or pass auto_step=True to run it from optimizer.step()

Gradients of pruned entries are zeroed as backward produces them (see :mod:`acdc.masking`), so any step style
works: plain, gradient accumulation, clipping before the step, ``optimizer.step(closure)`` (LBFGS, Lightning).
Methods that must touch gradients or weights right before the update (Top-KAST, STR) override
:meth:`SparseMethod._before_update` (and :meth:`SparseMethod._before_closure`); under a closure step the closure is
wrapped so these run around each evaluation, after its backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import nn

from ..masking import (
    MaskedParams,
    OptimizerHooks,
    mask_optimizer_state,
    optimizer_keeps_zeros,
    rekey,
    state_owner,
    unwrap_model,
    unwrap_optimizer,
)
from ..masks import check_sparsity
from ..selection import UNSTRUCTURED, Target, resolve_target
from ..targets import parameter_aliases, prunable_parameters

if TYPE_CHECKING:
    from typing import Unpack

Listener = Callable[[str, dict], None]


class SharedOptions(TypedDict, total=False):
    """Options every method takes, handled once by :class:`SparseMethod` (a method's own options come first).

    - ``steps_per_epoch``: optimizer steps per epoch (``len(train_loader)``); None: call ``step()`` once per epoch.
    - ``structure`` (``"unstructured"`` | ``"N:M"``), ``distribution`` (``"global"`` | ``"uniform"`` | ``"erk"``;
      default: the method's), ``erk_power_scale``: which positions are kept (:mod:`acdc.selection`); ``target``:
      the deprecated one-word spelling (``"global"``, ``"uniform"``, ``"2:4"``) or a :class:`Target`.
    - ``include`` / ``exclude``: glob patterns choosing the prunable parameters (:func:`prunable_parameters`).
    - ``mask_weights``: re-zero pruned weights after each step (``"auto"``: only for optimizers that do not keep
      zeros at zero); ``auto_step``: call :meth:`SparseMethod.step` from ``optimizer.step()``.
    """

    steps_per_epoch: int | None
    structure: str | None
    distribution: str | None
    erk_power_scale: float | None
    target: str | Target | None
    include: str | Iterable[str] | None
    exclude: str | Iterable[str] | None
    mask_weights: bool | str
    auto_step: bool


class SparseMethod:
    """Shared plumbing: prunable parameters, masks, hooks, step counting, events, state_dict."""

    name = "base"
    # The method contract: what a training loop, compare or report may rely on, instead of testing method names.
    yields_sparse: bool = True  # the final model is sparse (False only for the dense baseline)
    yields_dense: bool = False  # a dense model also comes out of training (AC/DC's dense phases, the dense baseline)
    needs_dense_init: bool = False  # prunes a trained dense model (one-shot): start it from a dense run's weights
    has_dense_finetune: bool = False  # its best dense model can be fine-tuned densely (AC/DC: `acdc finetune-dense`)
    compressions: int = 0  # sparse-phase starts so far (AC/DC counts them; a dense model counts after the first)
    # data-parallel process group (set by the training loop under DDP): a method that reads raw per-rank gradients
    # (RigL's dense-gradient capture runs before DDP's all-reduce) averages them over it, so every rank agrees
    grad_group: Any = None

    # What the shared selection options may say (see acdc.selection): a method's default distribution, whether it
    # supports N:M structure, and whether it selects positions at all (STR learns thresholds instead).
    default_distribution: str = "global"
    supports_nm: bool = True
    selects_positions: bool = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        sparsity: float,
        **shared: Unpack[SharedOptions],
    ) -> None:
        """``shared``: the options every method takes (:class:`SharedOptions`), handled here once."""
        unknown = set(shared) - set(SharedOptions.__annotations__)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown option(s) {sorted(unknown)}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        optimizer = unwrap_optimizer(optimizer)  # AcceleratedOptimizer & co.: hook the real optimizer
        model = unwrap_model(model)  # DDP / torch.compile: names (and saved masks) without wrapper prefixes
        steps_per_epoch = shared.get("steps_per_epoch")
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive integer (len(train_loader)), got {steps_per_epoch!r}")
        self.model = model
        self.optimizer = optimizer
        self.target = type(self).resolve_target(shared)
        self.target_sparsity = check_sparsity(sparsity) if not self.target.is_nm else self.target.nominal_sparsity(0)
        self.steps_per_epoch = steps_per_epoch
        self.masked = MaskedParams(prunable_parameters(model, shared.get("include"), shared.get("exclude")))
        # every name of each prunable parameter (tied weights have several) -> the name used here
        self.aliases = {a: n for n, names in parameter_aliases(model).items() if n in self.masked.params
                        for a in names}
        self.skipped: list[str] = self.target.prepare(self.masked.params)
        self._check_in_optimizer(optimizer)
        mask_weights = shared.get("mask_weights", "auto")
        self.mask_weights = bool(not optimizer_keeps_zeros(optimizer) if mask_weights == "auto" else mask_weights)
        self.auto_step = bool(shared.get("auto_step", False))
        self.steps = 0
        self._pristine: dict[str, Any] | None = None  # see _pristine_begin
        self.history: list[dict] = []
        self._listeners: list[Listener] = []
        needs_pre = (type(self)._before_update is not SparseMethod._before_update
                     or type(self)._before_closure is not SparseMethod._before_closure)
        needs_post = self.mask_weights or self.auto_step or type(self)._post_step is not SparseMethod._post_step
        self._hooks = OptimizerHooks(optimizer, self._pre_step if needs_pre else None,
                                     self._post_step if needs_post else None)

    @classmethod
    def resolve_target(cls, options: Mapping[str, Any], prefix: str = "") -> Target:
        """The :class:`~acdc.selection.Target` of ``options`` (``structure``, ``distribution``, ``erk_power_scale``
        or the deprecated ``target``) for this method; what does not apply to it is a ``ValueError`` naming the key
        (``prefix`` + key, e.g. ``method.structure`` in a recipe)."""
        keys = ("structure", "distribution", "erk_power_scale", "target")
        given = {k: options[k] for k in keys if options.get(k) is not None}
        if not cls.selects_positions:
            bad = [k for k, v in given.items() if not (k == "structure" and str(v).strip().lower() == UNSTRUCTURED)]
            if bad:
                raise ValueError(f"{cls.name}: `{prefix}{bad[0]}` does not apply: {cls.name} does not select kept "
                                 "positions (only `structure: unstructured` is accepted); remove it")
            return Target()
        target = resolve_target(**given, default_distribution=cls.default_distribution, prefix=prefix)
        if target.is_nm and not cls.supports_nm:
            raise ValueError(f"{cls.name}: `{prefix}structure: {target.structure}` (N:M) is not supported: its masks "
                             "change with a per-layer count, not N of each M; use structure: unstructured, or N:M "
                             "with acdc or oneshot")
        return target

    def _check_in_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        opt_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        not_opt = [n for n, p in self.masked.params.items() if id(p) not in opt_ids]
        if not_opt:
            raise ValueError(f"prunable parameters {not_opt[:5]} are not in the optimizer; build the optimizer from "
                             "model.parameters() or exclude them")

    # ------------------------------------------------------------------ hooks
    def _before_closure(self) -> None:
        """Runs before each evaluation of a step's closure (nothing by default)."""

    def _before_update(self) -> None:
        """Runs after the step's gradients are final, right before the update: in the step pre-hook for a plain
        step, after each closure evaluation for ``step(closure)``. Gradients are already masked (nothing to do)."""

    def _pre_step(self, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        # args = (optimizer, *step_args) as torch passes them to step pre-hooks
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._before_update()
            return None

        def wrapped():
            self._before_closure()
            loss = closure()
            self._before_update()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": wrapped}
        return (args[0], wrapped, *args[2:]), kwargs

    def _post_step(self) -> None:
        if self.mask_weights and self.masked.masks is not None:
            self.masked.apply_to_weights()
        if self.auto_step:
            self.step()

    def remove_hooks(self) -> None:
        """Detach from the optimizer and stop masking gradients (masks stay applied to the weights)."""
        self._hooks.remove()
        self.masked.enable_grad_hooks(False)

    # ------------------------------------------------------------------ masks
    @torch.no_grad()
    def _install_masks(self, masks: Mapping[str, torch.Tensor],
                       state_masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Install ``masks`` (zeroing the pruned weights) and zero the optimizer state outside ``state_masks``
        (default: ``masks``), so neither stale weights nor stale momentum survive a mask change."""
        self._pristine_begin()
        self.masked.set_masks(masks, apply=True)
        mask_optimizer_state(self.optimizer, self.masked.params, masks if state_masks is None else state_masks)
        self._pristine_end()

    # ------------------------------------------------------------------ load order
    @torch.no_grad()
    def _pristine_begin(self) -> None:
        """Before the first change a method makes to the model at construction (pruning at once, so step 1 is
        exact): keep a copy of the prunable weights and their optimizer state, so a :meth:`load_state_dict`
        before the first :meth:`step` can undo it when the model was loaded *before* the method was built.
        Memory: one copy of the prunable weights (and state), freed at the first step() or load_state_dict()."""
        if self.steps or self._pristine is not None:
            return
        state = state_owner(self.optimizer).state
        opt_state = {}
        for n, p in self.masked.params.items():
            for k, v in state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    opt_state[(n, k)] = (v, v.detach().clone())
        self._pristine = {"weights": {n: p.detach().clone() for n, p in self.masked.params.items()},
                          "state": opt_state, "versions": {}, "state_versions": {}}

    def _pristine_end(self) -> None:
        """Record what construction left (tensor versions), to tell later whether the user loaded over it."""
        if self._pristine is None or self.steps:
            return
        self._pristine["versions"] = {n: p._version for n, p in self.masked.params.items()}
        self._pristine["state_versions"] = {key: v._version for key, (v, _) in self._pristine["state"].items()}

    @torch.no_grad()
    def _undo_construction(self) -> None:
        """Restore the weights/state the constructor changed, where nothing was loaded over them since."""
        pr, self._pristine = self._pristine, None
        if pr is None or self.steps:
            return
        for n, p in self.masked.params.items():
            if p._version == pr["versions"].get(n):
                p.copy_(pr["weights"][n])
        state = state_owner(self.optimizer).state
        for (n, k), (v, saved) in pr["state"].items():
            if state.get(self.masked.params[n], {}).get(k) is v and v._version == pr["state_versions"].get((n, k)):
                v.copy_(saved)

    # ------------------------------------------------------------------ time
    @property
    def epoch(self) -> float:
        """Training time in (fractional) epochs: steps / steps_per_epoch (or step() calls when it is None)."""
        return self.steps / self.steps_per_epoch if self.steps_per_epoch else float(self.steps)

    def step(self) -> None:
        """Advance one optimizer step; subclasses change masks here."""
        self._pristine = None
        self.steps += 1
        self._on_step()

    def _on_step(self) -> None:
        pass

    def finalize(self) -> None:
        """End of training: leave a plain model (e.g. STR bakes its thresholds into the weights). Default: nothing.
        A method that changes the model here emits an event, so callers know to re-evaluate it."""

    def training_flops_per_sample(self, current_flops_per_sample: float,
                                  dense_flops_per_sample: float) -> float | None:
        """Training FLOPs per sample of the epoch just trained, given the inference FLOPs per sample of the current
        and of the dense model; ``None`` when the method has no formula of its own (callers then count a step as
        forward + backward of the current model, ``3 * current_flops_per_sample``)."""
        return None

    # ------------------------------------------------------------------ queries
    @property
    def masks(self) -> dict[str, torch.Tensor] | None:
        """Parameter name -> bool mask (True = kept); None while the model is dense."""
        return self.masked.masks

    @property
    def phase(self) -> str:
        return "dense" if self.masked.masks is None else "sparse"

    def sparsity(self) -> float:
        """Achieved sparsity over the prunable weights (fraction exactly zero)."""
        return self.masked.sparsity()

    def layer_sparsity(self) -> dict[str, float]:
        return self.masked.layer_sparsity()

    # ------------------------------------------------------------------ events
    def add_listener(self, fn: Listener) -> None:
        """``fn(event, info)`` is called on mask events ("compress", "decompress", "update")."""
        self._listeners.append(fn)

    def _emit(self, event: str, **info: Any) -> None:
        rec = {"event": event, "step": self.steps, "epoch": self.epoch}
        self.history.append(rec)
        for fn in self._listeners:
            fn(event, {**rec, **info})

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        m = self.masked.masks
        return {
            "method": self.name,
            "steps": self.steps,
            "masks": None if m is None else {k: v.clone() for k, v in m.items()},
            "history": list(self.history),
            "skipped": list(self.skipped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Either order works: build the method then load the model, optimizer and
        method state; or load the model (and optimizer) first, then build the method and load its state — what
        the constructor pruned is put back first (where nothing was loaded over it) and the saved masks decide."""
        if state.get("method", self.name) != self.name:
            raise ValueError(f"state_dict is for method {state.get('method')!r}, not {self.name!r}")
        self._undo_construction()
        self.steps = int(state["steps"])
        self.history = list(state.get("history", []))
        masks = state.get("masks")
        self.masked.set_masks(None if masks is None else rekey(masks, self.masked.params, aliases=self.aliases),
                              apply=True)
