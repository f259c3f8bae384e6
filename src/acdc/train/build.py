"""What a recipe builds: the model, the optimizer, the LR multiplier, the device, and the seeded RNG states.

Shared by the epoch loop (:mod:`acdc.train.loop`), ``agree`` and ``memorize`` so each builds a run's model the same
way; kept out of the loop so code that only needs a model does not import the loop.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import data as data_mod
from .. import models as models_mod
from .recipe import Recipe

__all__ = ["build_model", "build_optimizer", "lr_factor_fn", "resolve_device", "rng_state", "seed_everything",
           "set_rng_state"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("recipe key `device` is 'cuda' but no CUDA device is available; use device: cpu or auto")
    return torch.device(name)


def build_model(recipe: Recipe, bundle: data_mod.DataBundle) -> nn.Module:
    cfg = dict(recipe.model)
    name = cfg.pop("name")
    try:
        return models_mod.build(name, num_classes=bundle.num_classes, **cfg)
    except TypeError as e:
        raise ValueError(f"recipe `model` block: {e} (check the keys under `model:`)") from None


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    oc = recipe.optimizer
    params: Any = model.parameters()
    if oc.no_decay_bias_norm and oc.weight_decay:
        decay, no_decay = [], []
        for p in model.parameters():
            (no_decay if p.dim() <= 1 else decay).append(p)
        params = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    if oc.name == "sgd":
        return torch.optim.SGD(params, lr=oc.lr, momentum=oc.momentum, nesterov=oc.nesterov and oc.momentum > 0,
                               weight_decay=oc.weight_decay)
    cls = torch.optim.AdamW if oc.name == "adamw" else torch.optim.Adam
    return cls(params, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, weight_decay=oc.weight_decay)


def lr_factor_fn(recipe: Recipe, steps_per_epoch: int):
    """Multiplier of the base LR as a function of the global optimizer step (for ``LambdaLR``)."""
    sc = recipe.lr_schedule
    total = recipe.epochs * steps_per_epoch
    warm = int(round(sc.warmup_epochs * steps_per_epoch))
    floor = sc.min_lr / recipe.optimizer.lr

    def fn(step: int) -> float:
        if warm and step < warm:
            return sc.warmup_start_factor + (1 - sc.warmup_start_factor) * step / warm
        if sc.name == "constant":
            return 1.0
        if sc.name == "step":
            epoch = step / steps_per_epoch
            return sc.gamma ** sum(1 for m in sc.milestones if epoch >= m)
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
