"""SET: random growth only among inactive positions, seeded and reproducible; constant layer sparsity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acdc.methods import SET

pytestmark = pytest.mark.usefixtures("single_thread")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))


def run(seed: int) -> list[dict[str, torch.Tensor]]:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    m = SET(model, opt, sparsity=0.75, total_steps=40, update_every=5, seed=seed)
    assert m.layer_target_sparsity == {"0.weight": 0.75, "2.weight": 0.75}  # uniform by default
    g = torch.Generator().manual_seed(0)
    history = [{n: v.clone() for n, v in m.masks.items()}]
    for _ in range(30):
        prev = history[-1]
        before = {n: p.detach().clone() for n, p in m.masked.params.items()}
        opt.zero_grad()
        model(torch.randn(8, 12, generator=g)).pow(2).mean().backward()
        opt.step()
        m.step()
        for n, v in m.masks.items():
            grown = v & ~prev[n]
            assert not bool(before[n][grown].any())  # they were pruned (zero) before the update ...
            assert not bool(m.masked.params[n].detach()[grown].any())  # ... and start at zero
            assert int(v.sum()) == int(prev[n].sum())
            assert int(grown.sum()) == int((prev[n] & ~v).sum())
        history.append({n: v.clone() for n, v in m.masks.items()})
    return history


def test_set_grows_inactive_positions_reproducibly() -> None:
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x[n], y[n]) for x, y in zip(a, b) for n in x)
    assert any(not torch.equal(x[n], y[n]) for x, y in zip(a, c) for n in x)
    assert any(not torch.equal(a[0][n], a[-1][n]) for n in a[0])  # the masks did change
