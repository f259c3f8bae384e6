"""STR: thresholds learn, sparsity rises, the auto decay lands near the target, finalize() leaves a plain model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acdc.methods import STR, build_method

pytestmark = pytest.mark.usefixtures("single_thread")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


def test_thresholds_get_gradients_and_sparsity_rises() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = STR(model, opt, sparsity=0.8, s_init=-4.0, threshold_decay=0.01)
    assert len(opt.param_groups) == 1 and all(any(s is p for p in opt.param_groups[0]["params"])
                                              for s in m.thresholds.values())
    s0 = m.sparsity()
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        opt.zero_grad()
        x, y = torch.randn(16, 12, generator=g), torch.randint(0, 3, (16,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        assert all(s.grad is not None and float(s.grad) != 0 for s in m.thresholds.values())
        opt.step()
        m.step()
    assert m.sparsity() > s0 + 0.1
    assert all(v > torch.sigmoid(torch.tensor(-4.0)) for v in m.threshold_values().values())
    w = m.effective_weights()
    assert m.sparsity() == sum(int((t == 0).sum()) for t in w.values()) / sum(t.numel() for t in w.values())


def test_auto_decay_lands_near_target_and_finalize_bakes_weights() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = build_method("str", model, opt, steps_per_epoch=10, epochs=5, sparsity=0.7,
                     options={"reach_fraction": 1.0, "mean_lr_factor": 1.0})
    x = torch.randn(4, 12)
    for _ in range(50):  # zero loss: only the thresholds' weight decay acts, so the helper's arithmetic is exact
        opt.zero_grad()
        (model(x) * 0).sum().backward()
        opt.step()
        m.step()
    assert m.sparsity() == pytest.approx(0.7, abs=0.01)
    out = model(x)
    m.finalize()
    assert sorted(k for k in model.state_dict() if "weight" in k) == ["0.weight", "2.weight", "4.weight"]
    assert torch.allclose(model(x), out)
    assert m.sparsity() == pytest.approx(0.7, abs=0.01)
    assert m.phase == "sparse"
    with pytest.raises(ValueError, match="assumes SGD"):
        model2 = make_model()
        build_method("str", model2, torch.optim.Adam(model2.parameters()), steps_per_epoch=1, epochs=1,
                     sparsity=0.5)
