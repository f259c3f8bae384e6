"""Method registry: recipe ``method:`` name -> builder (and the class it builds). One line per method.

Each builder receives the run context (``steps_per_epoch``, ``epochs``, ``sparsity``) and the recipe's method
block as keyword options; unknown options raise ``ValueError`` naming them. Times given in epochs may be fractional.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..schedule import Schedule
from ..targets import prunable_parameters
from .acdc import ACDC
from .base import SparseMethod
from .dense import Dense
from .gmp import GMP
from .oneshot import OneShot
from .rigl import RigL
from .set import SET
from .str import STR, str_threshold_decay
from .topkast import TopKAST

Builder = Callable[..., SparseMethod]
_BUILDERS: dict[str, Builder] = {}
_CLASSES: dict[str, type[SparseMethod]] = {}
COMMON = {"include", "exclude"}  # options every method takes (which parameters are prunable)
# which positions are kept (acdc.selection), for every method that selects them; `target` is the deprecated alias
SELECTION = {"structure", "distribution", "erk_power_scale", "target"}


def register(name: str, cls: type[SparseMethod] | None = None) -> Callable[[Builder], Builder]:
    """Register a builder for recipe ``method: name``; ``cls``: the class it builds, whose contract flags
    (``yields_sparse``, ``yields_dense``, ``needs_dense_init``, ``has_dense_finetune``) callers read through
    :func:`method_class`."""
    def deco(fn: Builder) -> Builder:
        _BUILDERS[name] = fn
        if cls is not None:
            _CLASSES[name] = cls
        return fn

    return deco


def available() -> list[str]:
    return sorted(_BUILDERS)


def method_class(name: str) -> type[SparseMethod]:
    """The class recipe ``method: name`` builds, to read its contract flags without building it.

    A name registered without a class, or not registered here (a run made with a plugin method that is not imported
    now), gets :class:`SparseMethod` itself: the base contract (yields a sparse model only)."""
    return _CLASSES.get(name, SparseMethod)


def build_method(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: int,
    sparsity: float,
    options: dict[str, Any] | None = None,
) -> SparseMethod:
    """Build method ``name`` for a run of ``epochs`` epochs of ``steps_per_epoch`` steps.

    ``options`` is the recipe's method block (e.g. ``{"distribution": "global", "schedule": "paper_imagenet"}``);
    unknown options raise ``TypeError``/``ValueError`` from the builder, naming the key.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown method {name!r}; available: {available()}")
    return _BUILDERS[name](model, optimizer, steps_per_epoch=steps_per_epoch, epochs=epochs, sparsity=sparsity,
                           **dict(options or {}))


def _check_keys(method: str, opts: dict, allowed: set[str]) -> None:
    unknown = set(opts) - allowed
    if unknown:
        raise ValueError(f"method {method!r}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


@register("dense", Dense)
def _dense(model, optimizer, *, steps_per_epoch, epochs, sparsity, **opts):
    _check_keys("dense", opts, COMMON)
    return Dense(model, optimizer, steps_per_epoch=steps_per_epoch, **opts)


ACDC_OPTIONS = COMMON | SELECTION | {"schedule", "reset_optimizer"}


@register("acdc", ACDC)
def _acdc(model, optimizer, *, steps_per_epoch, epochs, sparsity, schedule="paper_imagenet", **opts):
    _check_keys("acdc", opts, ACDC_OPTIONS - {"schedule"})
    sched = schedule if isinstance(schedule, Schedule) else Schedule.from_config(schedule, epochs)
    return ACDC(model, optimizer, sparsity=sparsity, schedule=sched, steps_per_epoch=steps_per_epoch, **opts)


GMP_OPTIONS = COMMON | SELECTION | {"start_epoch", "end_epoch", "initial_sparsity", "update_every"}
ONESHOT_OPTIONS = COMMON | SELECTION | {"from_checkpoint"}
DROPGROW_OPTIONS = COMMON | SELECTION | {"update_every", "end_fraction", "alpha", "decay", "init", "seed"}
TOPKAST_OPTIONS = COMMON | SELECTION | {"backward_sparsity", "update_every", "l2"}
# STR learns its thresholds: the selection keys reach it so that it can say which one does not apply
STR_OPTIONS = COMMON | SELECTION | {"s_init", "threshold_decay", "reach_fraction", "mean_lr_factor"}


@register("gmp", GMP)
def _gmp(model, optimizer, *, steps_per_epoch, epochs, sparsity, start_epoch=None, end_epoch=None,
         update_every=None, **opts):
    """Defaults: ramp from 10% to 75% of training, pruning once per epoch (``update_every`` = steps_per_epoch)."""
    _check_keys("gmp", opts, GMP_OPTIONS)
    start = 0.1 * epochs if start_epoch is None else float(start_epoch)
    end = 0.75 * epochs if end_epoch is None else float(end_epoch)
    if not 0 <= start <= end <= epochs:
        raise ValueError(f"gmp: need 0 <= start_epoch <= end_epoch <= epochs ({epochs}), got {start}, {end}")
    return GMP(model, optimizer, sparsity=sparsity, start_step=int(round(start * steps_per_epoch)),
               end_step=int(round(end * steps_per_epoch)), update_every=update_every or steps_per_epoch,
               steps_per_epoch=steps_per_epoch, **opts)


@register("oneshot", OneShot)
def _oneshot(model, optimizer, *, steps_per_epoch, epochs, sparsity, **opts):
    """``from_checkpoint``: a trained model's ``.safetensors`` to load and prune (missing/non-matching: an error)."""
    _check_keys("oneshot", opts, ONESHOT_OPTIONS)
    return OneShot(model, optimizer, sparsity=sparsity, steps_per_epoch=steps_per_epoch, **opts)


def _dropgrow(name: str, cls: type[SparseMethod]) -> Builder:
    """One builder for the drop/grow family (RigL: ERK, update_every=100, end_fraction=0.75, alpha=0.3, cosine
    decay; SET: the same with random growth and ``distribution="uniform"`` by default)."""
    def build(model, optimizer, *, steps_per_epoch, epochs, sparsity, **opts):
        _check_keys(name, opts, DROPGROW_OPTIONS)
        return cls(model, optimizer, sparsity=sparsity, total_steps=epochs * steps_per_epoch,
                   steps_per_epoch=steps_per_epoch, **opts)

    return register(name, cls)(build)


_dropgrow("rigl", RigL)
_dropgrow("set", SET)


@register("topkast", TopKAST)
def _topkast(model, optimizer, *, steps_per_epoch, epochs, sparsity, **opts):
    """Defaults: backward_sparsity = sparsity - 0.1 (>= 0), update_every=100, l2=1e-4, target uniform."""
    _check_keys("topkast", opts, TOPKAST_OPTIONS)
    return TopKAST(model, optimizer, sparsity=sparsity, steps_per_epoch=steps_per_epoch, **opts)


@register("str", STR)
def _str(model, optimizer, *, steps_per_epoch, epochs, sparsity, s_init=-5.0, threshold_decay="auto",
         reach_fraction=0.5, mean_lr_factor=0.5, **opts):
    """``threshold_decay="auto"`` (SGD only) picks s_init/decay with :func:`str_threshold_decay` so weight decay
    alone would reach the target's magnitude threshold at ``reach_fraction`` of training, with the learning rate
    averaging ``mean_lr_factor`` × its initial value (0.5: cosine; 1.0: constant). Reaching it halfway leaves
    room for the loss gradient, which pulls thresholds down."""
    _check_keys("str", opts, STR_OPTIONS)
    STR.resolve_target(opts)  # a selection key that does not apply: its error before any work
    if threshold_decay == "auto":
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError("str: threshold_decay='auto' assumes SGD; give a number for "
                             f"{type(optimizer).__name__} (e.g. threshold_decay: 1e-4)")
        params = prunable_parameters(model, opts.get("include"), opts.get("exclude"))
        g = optimizer.param_groups[0]
        s_init, threshold_decay = str_threshold_decay(
            params, sparsity, max(1, int(reach_fraction * epochs * steps_per_epoch)),
            mean_lr_factor * g.get("initial_lr", g["lr"]),
            g.get("momentum", 0.0), s_init)
    return STR(model, optimizer, sparsity=sparsity, s_init=s_init, threshold_decay=float(threshold_decay),
               steps_per_epoch=steps_per_epoch, **opts)
