"""Small sparse models shared by the export / deploy tests."""

from __future__ import annotations

import torch
from torch import nn

from acdc import masks as M
from acdc import models
from acdc.targets import prunable_parameters

# registry name -> (constructor kwargs, example input) at test-friendly sizes
SMALL = {
    "small_cnn": ({"num_classes": 10, "width": 8}, lambda: torch.randn(2, 1, 28, 28)),
    "mlp": ({"num_classes": 10, "in_features": 64, "hidden": [128, 64]}, lambda: torch.randn(3, 64)),
    "resnet20": ({"num_classes": 10}, lambda: torch.randn(2, 3, 32, 32)),
    "wrn": ({"num_classes": 10, "depth": 10, "width": 1}, lambda: torch.randn(2, 3, 32, 32)),
    "mobilenet_v1": ({"num_classes": 10, "width_mult": 0.25}, lambda: torch.randn(2, 3, 32, 32)),
    "resnet50": ({"num_classes": 10}, lambda: torch.randn(1, 3, 32, 32)),
    "transformer_lm": ({"num_classes": 50, "n_layers": 1, "d_model": 32, "context": 16},
                       lambda: torch.randint(0, 50, (2, 16))),
}


def sparse_model(name: str, sparsity: float = 0.9, target: str = "uniform", seed: int = 0) -> nn.Module:
    """Registry model ``name`` (eval mode) pruned by magnitude; pruned weights are +0.0."""
    torch.manual_seed(seed)
    kwargs = dict(SMALL[name][0])
    model = models.build(name, kwargs.pop("num_classes"), **kwargs).eval()
    params = prunable_parameters(model)
    masks = M.uniform_magnitude(params, sparsity) if target == "uniform" else M.global_magnitude(params, sparsity)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(torch.where(masks[n], p, torch.zeros(())))
        for mod in model.modules():  # non-trivial BN statistics so a lost buffer would show
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return model


def example(name: str, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return SMALL[name][1]()
