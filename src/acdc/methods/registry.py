"""Method registry: recipe ``method:`` name -> builder. Each builder receives the training context and options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..schedule import Schedule
from .acdc import ACDC
from .base import SparseMethod
from .dense import Dense

Builder = Callable[..., SparseMethod]
_BUILDERS: dict[str, Builder] = {}
_CLASSES: dict[str, type[SparseMethod]] = {}


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

    ``options`` is the recipe's method block (e.g. ``{"target": "global", "schedule": "paper_imagenet"}``);
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
    _check_keys("dense", opts, {"include", "exclude"})
    return Dense(model, optimizer, steps_per_epoch=steps_per_epoch, **opts)


ACDC_OPTIONS = {"schedule", "target", "include", "exclude", "reset_optimizer"}


@register("acdc", ACDC)
def _acdc(model, optimizer, *, steps_per_epoch, epochs, sparsity, schedule="paper_imagenet", **opts):
    _check_keys("acdc", opts, ACDC_OPTIONS - {"schedule"})
    sched = schedule if isinstance(schedule, Schedule) else Schedule.from_config(schedule, epochs)
    return ACDC(model, optimizer, sparsity=sparsity, schedule=sched, steps_per_epoch=steps_per_epoch, **opts)
