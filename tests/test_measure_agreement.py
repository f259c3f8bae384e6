"""Sample-level agreement between two models: exact breakdowns and self-comparison."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from acdc.measure.agreement import agreement, agreement_from_logits


class Fixed(nn.Module):
    """Returns stored logits for input indices (x = sample ids)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x]


def test_self_agreement_equals_entropy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    model.train()
    xs, ys = torch.randn(10, 4), torch.randint(0, 3, (10,))
    loader = [(xs[:6], ys[:6]), (xs[6:], ys[6:])]
    res = agreement(model, model, loader)
    assert res["agreement"] == 1.0 and res["n"] == 10
    assert res["cross_entropy_ab"] == pytest.approx(res["entropy_a"], abs=1e-12)
    assert res["kl_ab"] == pytest.approx(0.0, abs=1e-12)
    assert model.training and model[1].training  # train mode restored
    with torch.no_grad():
        p = torch.softmax(model.eval()(xs).double(), -1)  # eval: dropout off, as inside agreement()
    assert res["entropy_a"] == pytest.approx(float(-(p * p.log()).sum(-1).mean()), abs=1e-9)
    assert res["only_a_right"] == 0.0 and res["both_wrong_different"] == 0.0


def test_breakdown_hand_computed():
    big = 10.0
    a = torch.zeros(5, 3)
    b = torch.zeros(5, 3)
    preds_a = [0, 1, 0, 0, 1]
    preds_b = [0, 2, 2, 1, 1]
    for i, (pa, pb) in enumerate(zip(preds_a, preds_b)):
        a[i, pa] = big
        b[i, pb] = big
    y = torch.tensor([0, 1, 2, 2, 0])
    # sample 0 both right; 1 only A; 2 only B; 3 both wrong, different (0 vs 1); 4 both wrong, same (1)
    ids = torch.arange(5)
    res = agreement(Fixed(a), Fixed(b), [(ids, y)])
    assert res["agreement"] == 2 / 5
    assert res["acc_a"] == 2 / 5 and res["acc_b"] == 2 / 5
    assert (res["both_right"], res["only_a_right"], res["only_b_right"], res["both_wrong"]) == (0.2, 0.2, 0.2, 0.4)
    assert res["both_wrong_same"] == 0.2 and res["both_wrong_different"] == 0.2
    # cross-entropy H(p_a, p_b): agreeing rows cost -log(e^10/(e^10+2)), others -log(1/(e^10+2)) (almost)
    z = math.exp(big) + 2
    pa_top, pa_low = math.exp(big) / z, 1 / z
    same = -(pa_top * math.log(pa_top) + 2 * pa_low * math.log(pa_low))
    diff = -(pa_top * math.log(pa_low) + pa_low * math.log(pa_top) + pa_low * math.log(pa_low))
    assert res["cross_entropy_ab"] == pytest.approx((2 * same + 3 * diff) / 5, rel=1e-9)
    assert res["cross_entropy_sym"] == pytest.approx(res["cross_entropy_ab"], rel=1e-9)  # symmetric by design


def test_lm_outputs_per_token_and_ignore_index():
    a = torch.zeros(1, 3, 2)
    a[0, :, 0] = 5.0  # A predicts 0 everywhere
    b = a.clone()
    b[0, 2] = torch.tensor([0.0, 5.0])  # B differs at the last token
    y = torch.tensor([[0, 1, -100]])
    res = agreement_from_logits(a, b, y)
    assert res["n"] == 2 and res["agreement"] == 1.0 and res["acc_a"] == 0.5
    res = agreement_from_logits(a, b)
    assert res["n"] == 3 and res["agreement"] == pytest.approx(2 / 3) and res["acc_a"] is None
