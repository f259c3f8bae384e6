"""One-shot pruning equals the mask functions exactly and stays fixed while fine-tuning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acdc.masks import global_magnitude, uniform_magnitude
from acdc.methods import build_method

pytestmark = pytest.mark.usefixtures("single_thread")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("target", ["global", "uniform"])
def test_oneshot_is_exact_and_fixed(target: str) -> None:
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    want = (global_magnitude if target == "global" else uniform_magnitude)(before, 0.7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = build_method("oneshot", model, opt, steps_per_epoch=5, epochs=2, sparsity=0.7,
                     options={"target": target, "from_checkpoint": "ignored.safetensors"})
    assert all(torch.equal(m.masks[n], want[n]) for n in want)
    for n, p in model.named_parameters():
        if n in want:
            assert torch.equal(p.detach(), before[n] * want[n])
    for _ in range(10):
        opt.zero_grad()
        model(torch.randn(8, 10)).pow(2).mean().backward()
        opt.step()
        m.step()
    assert all(torch.equal(m.masks[n], want[n]) for n in want)
    assert all(not bool(p.detach()[~want[n]].any()) for n, p in model.named_parameters() if n in want)
