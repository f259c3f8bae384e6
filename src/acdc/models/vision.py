"""torchvision-backed models (ResNet-50 and any ``torchvision:NAME`` classifier)."""

from __future__ import annotations

import torch.nn as nn

_HINT = "install torchvision, e.g. `pip install 'acdc-train[vision]'`"


def _torchvision_models():
    try:
        import torchvision.models as tvm
    except ImportError as e:  # pragma: no cover - depends on environment
        raise ImportError(f"this model needs torchvision, which is not importable ({e}); {_HINT}") from e
    return tvm


def resnet50(num_classes: int, **kwargs) -> nn.Module:
    """torchvision ResNet-50, randomly initialised (25.56M params at 1000 classes)."""
    tvm = _torchvision_models()
    return tvm.resnet50(weights=None, num_classes=num_classes, **kwargs)


def torchvision_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Any torchvision classification model by name, randomly initialised."""
    tvm = _torchvision_models()
    known = sorted(tvm.list_models(module=tvm))
    if name not in known:
        raise ValueError(
            f"unknown torchvision classification model {name!r}; known: {', '.join(known)}"
        )
    return tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
