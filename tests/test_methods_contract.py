"""The method contract declared on SparseMethod: flags, defaults, and callers reading them instead of names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acdc.compare import plan_runs
from acdc.methods import OneShot, SparseMethod, available, build_method, method_class, register
from acdc.methods import registry as registry_mod

pytestmark = pytest.mark.usefixtures("single_thread")

FLAGS = ("yields_sparse", "yields_dense", "needs_dense_init", "has_dense_finetune")
EXPECTED = {  # name -> (yields_sparse, yields_dense, needs_dense_init, has_dense_finetune)
    "dense": (False, True, False, False),
    "acdc": (True, True, False, True),
    "oneshot": (True, False, True, False),
    "gmp": (True, False, False, False),
    "rigl": (True, False, False, False),
    "set": (True, False, False, False),
    "topkast": (True, False, False, False),
    "str": (True, False, False, False),
}
TINY = {
    "name": "tiny", "seed": 3, "epochs": 4, "batch_size": 32,
    "model": {"name": "mlp", "in_features": 64, "hidden": [32]}, "data": {"name": "digits"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "method": {"name": "dense"}, "progress": False,
}


def _build(name: str) -> SparseMethod:
    model = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return build_method(name, model, opt, steps_per_epoch=10, epochs=4, sparsity=0.0 if name == "dense" else 0.5)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_flags_of_every_method_and_method_class_agree(name: str) -> None:
    assert sorted(EXPECTED) == available()
    m = _build(name)
    assert tuple(getattr(m, f) for f in FLAGS) == EXPECTED[name]
    assert method_class(name) is type(m) and method_class(name).name == name


def test_defaults_finalize_noop_and_no_own_flops_formula() -> None:
    m = _build("acdc")
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    m.finalize()
    assert all(torch.equal(p, before[n]) for n, p in m.model.named_parameters()) and m.history == []
    assert m.training_flops_per_sample(2.0, 5.0) is None  # the caller then counts 3 x current
    assert _build("set").training_flops_per_sample(current_flops_per_sample=2.0, dense_flops_per_sample=5.0) == 6.0
    assert method_class("not-registered") is SparseMethod


def test_a_new_method_is_one_class_and_one_registry_line(monkeypatch) -> None:
    """compare plans a dense run and a warm start for any method declaring needs_dense_init, not only 'oneshot'."""
    class Prune(OneShot):
        name = "myprune"

    monkeypatch.setattr(registry_mod, "_BUILDERS", dict(registry_mod._BUILDERS))
    monkeypatch.setattr(registry_mod, "_CLASSES", dict(registry_mod._CLASSES))
    register("myprune", Prune)(lambda model, optimizer, *, steps_per_epoch, epochs, sparsity, **o:
                               Prune(model, optimizer, sparsity=sparsity, steps_per_epoch=steps_per_epoch, **o))
    specs = plan_runs(TINY, ["myprune"], [0.5], 1, oneshot_epochs=1)
    assert [(s.method, s.start_epoch, s.init_from) for s in specs] == [
        ("dense", 0, None), ("myprune", 3, "dense-s0-seed0")]
    assert specs[0].recipe.method == {"name": "dense"} and specs[1].recipe.sparsity == 0.5
