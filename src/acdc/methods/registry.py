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


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _BUILDERS[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_BUILDERS)


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


@register("dense")
def _dense(model, optimizer, *, steps_per_epoch, epochs, sparsity, **opts):
    _check_keys("dense", opts, {"include", "exclude"})
    return Dense(model, optimizer, steps_per_epoch=steps_per_epoch, **opts)


ACDC_OPTIONS = {"schedule", "target", "include", "exclude", "reset_optimizer"}


@register("acdc")
def _acdc(model, optimizer, *, steps_per_epoch, epochs, sparsity, schedule="paper_imagenet", **opts):
    _check_keys("acdc", opts, ACDC_OPTIONS - {"schedule"})
    sched = schedule if isinstance(schedule, Schedule) else Schedule.from_config(schedule, epochs)
    return ACDC(model, optimizer, sparsity=sparsity, schedule=sched, steps_per_epoch=steps_per_epoch, **opts)
