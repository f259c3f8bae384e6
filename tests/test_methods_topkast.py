"""Top-KAST: exact forward sparsity, B ⊇ A, only B is trained, weights outside B are kept, penalty on B \\ A."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acdc.masks import pruned_count
from acdc.methods import TopKAST

pytestmark = pytest.mark.usefixtures("single_thread")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("target", ["uniform", "global"])
def test_forward_sparsity_exact_and_backward_set_contains_forward(target: str) -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    m = TopKAST(model, opt, sparsity=0.8, backward_sparsity=0.6, update_every=3, target=target)
    lins = [mod for mod in model if isinstance(mod, nn.Linear)]
    names = [f"{i}.weight" for i, mod in enumerate(model) if isinstance(mod, nn.Linear)]
    seen: list[dict[str, int]] = []
    for lin, n in zip(lins, names):
        lin.register_forward_pre_hook(lambda mod, args, n=n: seen[-1].__setitem__(n, int(mod.weight.count_nonzero())))
    g = torch.Generator().manual_seed(0)
    changed_a = changed_b = False
    for _ in range(20):
        a0 = {n: v.clone() for n, v in m.masks.items()}
        b0 = {n: v.clone() for n, v in m.backward_masks.items()}
        theta0 = {n: torch.where(a0[n], p.detach(), m.stash[n]) for n, p in m.masked.params.items()}
        seen.append({})
        opt.zero_grad()
        model(torch.randn(8, 12, generator=g)).pow(2).mean().backward()
        opt.step()
        if target == "uniform":
            assert seen[-1] == {n: m.masked.params[n].numel() - pruned_count(m.masked.params[n].numel(), 0.8)
                                for n in names}
        else:
            total = sum(p.numel() for p in m.masked.params.values())
            assert sum(seen[-1].values()) == total - pruned_count(total, 0.8)
        theta = {n: torch.where(a0[n], p.detach(), m.stash[n]) for n, p in m.masked.params.items()}
        for n in names:
            assert torch.equal(theta[n][~b0[n]], theta0[n][~b0[n]])  # outside B: untouched despite wd/momentum
            assert bool((theta[n][b0[n] & ~a0[n]] != theta0[n][b0[n] & ~a0[n]]).any())  # B \ A is trained
            assert torch.count_nonzero(theta[n]) == theta[n].numel()  # dense θ is kept
        m.step()
        for n in names:
            a, b = m.masks[n], m.backward_masks[n]
            assert not bool((a & ~b).any())
            assert int(b.sum()) >= int(a.sum())
            assert not bool(m.masked.params[n].detach()[~a].any())
            changed_a |= not torch.equal(a, a0[n])
            changed_b |= not torch.equal(b, b0[n])
    assert changed_a and changed_b


def test_gradients_masked_to_b_plus_penalty() -> None:
    lin = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0, 5.0], [6.0, -7.0, 8.0, -9.0, 10.0]]))
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    m = TopKAST(lin, opt, sparsity=0.7, backward_sparsity=0.4, update_every=100, target="global", l2=0.3)
    # A = top 3 |θ| = {8, 9, 10}; B = top 6 = A + {5, 6, 7}
    assert m.masks["weight"].tolist() == [[False] * 5, [False, False, True, True, True]]
    assert m.backward_masks["weight"].tolist() == [[False] * 4 + [True], [True, True, True, True, True]]
    assert lin.weight.detach().tolist() == [[0.0] * 5, [0.0, 0.0, 8.0, -9.0, 10.0]]
    lin.weight.grad = torch.ones(2, 5)
    opt.step()
    coef = 0.3 / 0.3  # λ / D with D = 0.3
    # θ after the step: outside B unchanged; B \ A: θ - (1 + coef·θ); A: θ - 1
    want = torch.tensor([[1.0, -2.0, 3.0, -4.0, 5.0 - 1 - coef * 5.0],
                         [6.0 - 1 - coef * 6.0, -7.0 - 1 + coef * 7.0, 7.0, -10.0, 9.0]])
    theta = torch.where(m.masks["weight"], lin.weight.detach(), m.stash["weight"])
    assert torch.allclose(theta, want)
    assert lin.weight.detach().tolist() == [[0.0] * 5, [0.0, 0.0, 7.0, -10.0, 9.0]]


def test_gradients_outside_backward_set_are_zero_before_step() -> None:
    """Clipping/logging between backward() and step() see the gradient of the trained set B, nothing outside it."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = TopKAST(model, opt, sparsity=0.8, backward_sparsity=0.6, update_every=3, l2=0.0)
    model(torch.randn(8, 12)).pow(2).mean().backward()
    for n, p in m.masked.params.items():
        b = m.backward_masks[n]
        assert not bool(p.grad[~b].any()), f"gradient of {n} outside B visible before the step"
        assert bool(p.grad[b & ~m.masks[n]].any())  # B \ A is trained: its gradient is there
