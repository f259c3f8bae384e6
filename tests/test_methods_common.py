"""Behaviour every baseline shares: pruned weights stay exactly zero, and state_dict resumes bit-identically."""

from __future__ import annotations

import copy

import pytest
import torch
from _recipes import BASELINE_OPTIONS
from torch import nn

from acdc.methods import build_method

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS_PER_EPOCH, EPOCHS = 10, 6
OPTIONS = BASELINE_OPTIONS
METHODS = sorted(OPTIONS)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, 5))


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(8, 2, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)


def make_opt(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)


def build(name: str, model: nn.Module, opt: torch.optim.Optimizer):
    return build_method(name, model, opt, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS, sparsity=0.8,
                        options=OPTIONS[name])


def train(model, opt, method, steps: range, check=None) -> None:
    for i in steps:
        x, y = batch(i)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        method.step()
        if check is not None:
            check(method)


def check_zeros(method) -> None:
    if getattr(method, "finalized", True) is False:
        # STR before finalize(): its masks are read off the effective weights (w_eff != 0), so checking w_eff
        # against them would be circular; check instead that w_eff is zero exactly where |w| <= sigmoid(s)
        thresholds = method.threshold_values()
        for n, w_eff in method.effective_weights().items():
            mod_name, _, attr = n.rpartition(".")
            w = method.model.get_submodule(mod_name).parametrizations[attr].original.detach()
            assert torch.equal(w_eff == 0, w.abs() <= thresholds[n]), f"str: zeros of {n} off the threshold"
            assert torch.equal(method.masks[n], w_eff != 0)
        return
    masks = method.masks
    if masks is None:
        return
    for n, w in method.masked.weights().items():
        assert not bool(w[~masks[n]].any()), f"{method.name}: pruned weights of {n} moved"


@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", METHODS)
def test_pruned_weights_stay_zero(name: str, opt_kind: str) -> None:
    model = make_model()
    opt = make_opt(model, opt_kind)
    method = build(name, model, opt)
    train(model, opt, method, range(60), check_zeros)
    if name == "str":  # STR's zeros come from the thresholds; after finalize() its support is a fixed mask
        method.finalize()
        check_zeros(method)
        train(model, opt, method, range(60, 70), check_zeros)
    assert method.phase == "sparse" and method.yields_dense is False
    assert method.sparsity() > 0


def snapshot(model, opt, method):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), copy.deepcopy(method.state_dict())


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_is_bit_identical(name: str) -> None:
    model = make_model()
    opt = make_opt(model, "sgd")
    method = build(name, model, opt)
    train(model, opt, method, range(14))
    msd, osd, sd = snapshot(model, opt, method)
    train(model, opt, method, range(14, 35))
    want = copy.deepcopy(model.state_dict())

    model2 = make_model(seed=1)
    opt2 = make_opt(model2, "sgd")
    method2 = build(name, model2, opt2)
    model2.load_state_dict(msd)
    opt2.load_state_dict(osd)
    method2.load_state_dict(sd)
    assert method2.steps == 14
    train(model2, opt2, method2, range(14, 35))
    got = model2.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), f"{name}: {k} differs after resume"
    m1, m2 = method.masks, method2.masks
    assert (m1 is None) == (m2 is None)
    if m1 is not None:
        assert all(torch.equal(m1[n], m2[n]) for n in m1)


@pytest.mark.parametrize("name", [n for n in METHODS if n != "str"])  # STR's parametrization renames model keys
def test_load_model_before_building_the_method_equals_the_other_order(name: str) -> None:
    """Model and optimizer loaded *before* the method is built (which prunes at once), then the method's state:
    the same training as building first and loading after (issue 8, load order)."""
    model = make_model()
    opt = make_opt(model, "adam")
    method = build(name, model, opt)
    train(model, opt, method, range(14))
    msd, osd, sd = snapshot(model, opt, method)
    train(model, opt, method, range(14, 30))
    want = copy.deepcopy(model.state_dict())

    model2 = make_model(seed=1)
    model2.load_state_dict(msd)
    opt2 = make_opt(model2, "adam")
    opt2.load_state_dict(osd)
    method2 = build(name, model2, opt2)  # prunes the loaded weights / masks their state at once
    method2.load_state_dict(sd)
    train(model2, opt2, method2, range(14, 30))
    for k, v in want.items():
        assert torch.equal(model2.state_dict()[k], v), f"{name}: {k} differs (model loaded before the method)"
