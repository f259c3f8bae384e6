"""Model zoo for AC/DC experiments.

``build(name, num_classes, **kwargs)`` is the single entry point used by recipes and the
trainer, so every architecture is constructed the same way and an unknown name fails early
with a message listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from .mobilenet import MobileNetV1, mobilenet_v1
from .resnet_cifar import CifarResNet, resnet20, resnet32, resnet44, resnet56
from .small import MLP, SmallCNN, mlp, small_cnn
from .transformer import TransformerLM, transformer_lm
from .vision import resnet50, torchvision_model
from .wrn import WideResNet, wrn, wrn28_10

Factory = Callable[..., nn.Module]

MODELS: dict[str, Factory] = {
    "small_cnn": small_cnn,
    "mlp": mlp,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "wrn": wrn,
    "wrn28_10": wrn28_10,
    "resnet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
    "transformer_lm": transformer_lm,
}

TORCHVISION_PREFIX = "torchvision:"


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator adding a factory ``f(num_classes, **kwargs) -> nn.Module`` to the registry."""

    def deco(fn: Factory) -> Factory:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """Names accepted by :func:`build` (plus any ``torchvision:NAME``)."""
    return sorted(MODELS)


def build(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Construct model ``name`` with ``num_classes`` outputs (vocabulary size for LMs).

    ``name`` may also be ``"torchvision:<model>"`` for any torchvision classifier (random init).
    Extra keyword arguments go to the model's constructor.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_model(name[len(TORCHVISION_PREFIX):], num_classes, **kwargs)
    try:
        factory = MODELS[name]
    except KeyError:
        known = ", ".join(available())
        raise ValueError(
            f"unknown model {name!r}; known models: {known} (or 'torchvision:<name>')"
        ) from None
    try:
        return factory(num_classes, **kwargs)
    except TypeError as e:
        raise TypeError(f"bad arguments for model {name!r}: {e}") from e


__all__ = [
    "MODELS",
    "available",
    "build",
    "register",
    "SmallCNN",
    "MLP",
    "CifarResNet",
    "WideResNet",
    "MobileNetV1",
    "TransformerLM",
    "small_cnn",
    "mlp",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "wrn",
    "wrn28_10",
    "resnet50",
    "mobilenet_v1",
    "transformer_lm",
    "torchvision_model",
]
