"""GMP: the cubic schedule is exact, pruned counts are exact, masks only shrink, then stay fixed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acdc.masks import pruned_count
from acdc.methods import GMP, build_method

pytestmark = pytest.mark.usefixtures("single_thread")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 7), nn.ReLU(), nn.Linear(7, 3))


def run(method, model, opt, steps, on_step=None):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 12, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        method.step()
        if on_step is not None:
            on_step(method)


def test_sparsity_at_matches_formula() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = GMP(model, opt, sparsity=0.8, initial_sparsity=0.1, start_step=5, end_step=35, update_every=4)
    for t in [0, 4, 5, 6, 9, 13, 20, 33, 34, 35, 36, 100]:
        if t < 5:
            want = 0.0
        elif t >= 35:
            want = 0.8
        else:
            want = 0.8 + (0.1 - 0.8) * (1 - (t - 5) / 30) ** 3
        assert m.sparsity_at(t) == want
    assert [t for t in range(50) if m.is_prune_step(t)] == [5, 9, 13, 17, 21, 25, 29, 33, 35]


@pytest.mark.parametrize("target", ["global", "uniform"])
def test_pruned_counts_follow_schedule_and_masks_only_shrink(target: str) -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    m = GMP(model, opt, sparsity=0.9, start_step=3, end_step=23, update_every=5, target=target)
    seen = []
    prev = {}

    def check(method):
        t = method.steps
        if t < 3:
            assert method.masks is None and method.phase == "dense"
            return
        masks = method.masks
        if prev:
            assert all(not bool((masks[n] & ~prev[n]).any()) for n in masks), "a pruned weight came back"
        prev.update({n: v.clone() for n, v in masks.items()})
        s = method.sparsity_at(max(u for u in range(t + 1) if method.is_prune_step(u)))
        if target == "global":
            total = method.masked.numel()
            assert sum(int((~v).sum()) for v in masks.values()) == pruned_count(total, s)
        else:
            for n, v in masks.items():
                assert int((~v).sum()) == pruned_count(v.numel(), s), n
        for n, p in method.masked.params.items():
            assert int((p.detach() == 0).sum()) == int((~masks[n]).sum())
        seen.append(t)

    run(m, model, opt, 40, check)
    assert [e["step"] for e in m.history if e["event"] == "update"] == [3, 8, 13, 18, 23]
    assert len(seen) == 38


def test_builder_converts_epochs_and_rejects_unknown_options() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = build_method("gmp", model, opt, steps_per_epoch=10, epochs=8, sparsity=0.5,
                     options={"start_epoch": 0.5, "end_epoch": 4, "update_every": 7})
    assert (m.start_step, m.end_step, m.update_every) == (5, 40, 7)
    with pytest.raises(ValueError, match="unknown option"):
        build_method("gmp", model, opt, steps_per_epoch=10, epochs=8, sparsity=0.5, options={"strat_epoch": 1})
    with pytest.raises(ValueError, match="N:M"):
        model = make_model()
        GMP(model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.5, start_step=0, end_step=1,
            update_every=1, target="2:4")
