"""RigL: ERK allocation by hand, constant layer sparsity, equal drop/grow, growth by dense-gradient magnitude."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from acdc.methods import RigL, build_method
from acdc.selection import erk, keep_count

pytestmark = pytest.mark.usefixtures("single_thread")


def test_erk_matches_hand_computation() -> None:
    # conv (4, 2, 3, 3): 72 weights, raw (4+2+3+3)/72 = 1/6; linear (10, 4): 40 weights, raw 14/40 = 0.35.
    # 50%: kept 56 = eps * (72/6 + 0.35*40) = eps * 26  ->  densities 56/26/6 and 56/26*0.35.
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 10))
    params = {"c": model[0].weight, "l": model[2].weight}
    s = erk(params, 0.5)
    assert s["c"] == pytest.approx(1 - 56 / 26 / 6, abs=1e-12)
    assert s["l"] == pytest.approx(1 - 56 / 26 * 0.35, abs=1e-12)
    # two Linears (20, 10) and (5, 20) at 20%: raw 0.15 and 0.25; eps = 240/55 makes the second's density > 1,
    # so it becomes dense and the first carries all 60 zeros: sparsity 60/200 = 0.3
    p2 = {"a": torch.empty(20, 10), "b": torch.empty(5, 20)}
    s2 = erk(p2, 0.2)
    assert s2["b"] == 0.0 and s2["a"] == pytest.approx(0.3, abs=1e-12)
    assert erk(p2, 0.5) == pytest.approx({"a": 1 - 150 / 55 * 0.15, "b": 1 - 150 / 55 * 0.25})
    assert erk(p2, 0.6, power_scale=0.0) == pytest.approx({"a": 0.6, "b": 0.6})  # power 0: uniform


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))


def test_layer_sparsity_constant_and_drop_equals_grow() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    m = build_method("rigl", model, opt, steps_per_epoch=10, epochs=4, sparsity=0.8,
                     options={"update_every": 4, "alpha": 0.5})
    want = {n: int(v.sum()) for n, v in m.masks.items()}
    assert want == {n: keep_count(p.numel(), m.layer_target_sparsity[n]) for n, p in m.masked.params.items()}
    events = []
    m.add_listener(lambda e, info: events.append(info) if e == "update" else None)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        prev = {n: v.clone() for n, v in m.masks.items()}
        opt.zero_grad()
        model(torch.randn(8, 12, generator=g)).pow(2).mean().backward()
        opt.step()
        m.step()
        assert {n: int(v.sum()) for n, v in m.masks.items()} == want
        for n, v in m.masks.items():
            assert int((prev[n] & ~v).sum()) == int((v & ~prev[n]).sum())
            assert not bool(m.masked.params[n].detach()[~v].any())
    assert [e["step"] for e in events] == [4, 8, 12, 16, 20, 24, 28]  # until 0.75 * 40 steps
    assert all(e["dropped"] == e["grown"] for e in events) and sum(e["dropped"] for e in events) > 0
    assert events[0]["drop_fraction"] == pytest.approx(0.25 * (1 + math.cos(math.pi * 4 / 30)))


def test_grows_where_dense_gradient_is_largest() -> None:
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]))
    opt = torch.optim.SGD(lin.parameters(), lr=0.0)
    m = RigL(lin, opt, sparsity=0.5, total_steps=1000, distribution="uniform", init="magnitude", update_every=1,
             alpha=0.5, decay="constant")
    assert m.masks["weight"].tolist() == [[False] * 4, [True] * 4]
    grad = torch.tensor([[0.5, -9.0, 0.1, 3.0], [0.0, 0.0, 0.0, 0.0]])
    (lin.weight * grad).sum().backward()  # d/dW = grad, produced by autograd (hand-set .grad is not captured)
    opt.step()
    m.step()
    # drop round(0.5 * 4) = 2 smallest active (5, 6); grow 2 largest |grad| among the rest: (0, 1) and (0, 3)
    assert m.masks["weight"].tolist() == [[False, True, False, True], [False, False, True, True]]
    assert lin.weight.detach().tolist() == [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 7.0, 8.0]]  # grown start at 0
    assert lin.weight.grad[0, 1] == 0  # the gradient seen by the optimizer was masked


def test_newly_grown_weights_have_zero_optimizer_state() -> None:
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    m = build_method("rigl", model, opt, steps_per_epoch=5, epochs=2, sparsity=0.9,
                     options={"update_every": 3, "distribution": "uniform"})
    for _ in range(3):
        prev = {n: v.clone() for n, v in m.masks.items()}
        opt.zero_grad()
        model(torch.randn(8, 12)).pow(2).mean().backward()
        opt.step()
        m.step()
    for n, p in m.masked.params.items():
        new = m.masks[n] & ~prev[n]
        assert bool(new.any())
        for v in opt.state[p].values():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert not bool(v[new].any()) and not bool(v[~m.masks[n]].any())


class RecordingRigL(RigL):
    """RigL that records the growth scores it was given."""

    def _grow_scores(self, name, param):
        s = super()._grow_scores(name, param)
        self.recorded[name] = s.clone()
        return s


@pytest.mark.parametrize("set_to_none", [True, False])
def test_rigl_grows_by_dense_gradient_summed_over_micro_batches(set_to_none: bool) -> None:
    """Under gradient accumulation (2 micro-batches) the growth scores are |the dense gradient of the whole step|,
    although ``.grad`` only ever shows the masked gradient (pruned entries 0 before the step)."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    m = RecordingRigL(model, opt, sparsity=0.8, total_steps=40, update_every=2, steps_per_epoch=10)
    m.recorded = {}
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        xs = [torch.randn(4, 12, generator=g) for _ in range(2)]
        opt.zero_grad(set_to_none=set_to_none)
        if step == 1:
            ref = copy.deepcopy(model)  # no hooks travel with a deepcopy: plain dense gradients
            for x in xs:
                ref(x).pow(2).mean().backward()
        for x in xs:
            model(x).pow(2).mean().backward()
        for n, p in m.masked.params.items():
            assert not bool(p.grad[~m.masks[n]].any()), "pruned gradient visible before the step"
        opt.step()
        m.step()
    ref_params = dict(ref.named_parameters())
    assert set(m.recorded) == set(m.masked.params)
    for n, s in m.recorded.items():
        assert torch.equal(s, ref_params[n].grad.abs()), f"growth scores of {n} are not |dense gradient|"
