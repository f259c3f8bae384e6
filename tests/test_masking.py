"""The shared masking mechanism in any training loop: closure steps, gradients visible before the step (clipping,
logging), gradient accumulation — checked against ``torch.nn.utils.prune`` with the same masks and against the
plain loop, for every method."""

from __future__ import annotations

import copy

import pytest
import torch
from _recipes import BASELINE_OPTIONS
from torch import nn
from torch.nn.utils import prune

from acdc import ACDC, Schedule
from acdc.methods import build_method

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS_PER_EPOCH, EPOCHS = 10, 6
OPTIONS = {"acdc": {"schedule": {"phases": [["sparse", 0, 6]]}}, **BASELINE_OPTIONS}
METHODS = sorted(OPTIONS)
SPARSE_ONLY = Schedule.from_phases([("sparse", 0, 100)])


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))


def batch(i: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(n, 36, generator=g), torch.randint(0, 5, (n,), generator=g)


def make_opt(params, kind: str) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
    if kind == "lbfgs":
        return torch.optim.LBFGS(params, lr=0.5, max_iter=4, history_size=5)
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)


def build(name: str, model: nn.Module, opt: torch.optim.Optimizer):
    return build_method(name, model, opt, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS, sparsity=0.8,
                        options=copy.deepcopy(OPTIONS[name]))


def plain_step(model, opt, i: int) -> None:
    x, y = batch(i)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def closure_step(model, opt, i: int) -> None:
    x, y = batch(i)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)


def assert_pruned_zero(method) -> None:
    if getattr(method, "finalized", True) is False:
        return  # STR before finalize(): zeros come from the thresholds (tests/test_methods_common.py)
    masks = method.masks
    assert masks is not None
    for n, w in method.masked.weights().items():
        assert not bool(w[~masks[n]].any()), f"{method.name}: pruned weights of {n} moved"


# ---------------------------------------------------------------------------------------------------- closures
@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
@pytest.mark.parametrize("name", METHODS)
def test_closure_step_equals_plain_step(name: str, opt_kind: str) -> None:
    """``optimizer.step(closure)`` (Lightning, LBFGS) trains exactly like backward-then-step, mask updates included."""
    runs = []
    for stepper in (plain_step, closure_step):
        model = make_model()
        opt = make_opt(model.parameters(), opt_kind)
        method = build(name, model, opt)
        for i in range(32):
            stepper(model, opt, i)
            method.step()
            assert_pruned_zero(method)
        runs.append((model.state_dict(), method.masks))
    (sd_a, m_a), (sd_b, m_b) = runs
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), f"{name}/{opt_kind}: {k} differs between closure and plain steps"
    assert all(torch.equal(m_a[n], m_b[n]) for n in m_a)


def prune_reference(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Reparametrize ``model`` with torch.nn.utils.prune at ``masks``; the parameters in the original order."""
    order = [n for n, _ in model.named_parameters()]
    for n, m in masks.items():
        mod_name, _, attr = n.rpartition(".")
        prune.custom_from_mask(model.get_submodule(mod_name), attr, m)
    named = dict(model.named_parameters())
    return [named[n + "_orig"] if n in masks else named[n] for n in order]


def reference_weights(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``orig * mask`` (the pruned module's ``weight`` attribute is only refreshed by its next forward)."""
    out = {}
    for n in masks:
        mod_name, _, attr = n.rpartition(".")
        mod = model.get_submodule(mod_name)
        out[n] = (getattr(mod, attr + "_orig") * getattr(mod, attr + "_mask")).detach()
    return out


@pytest.mark.parametrize("opt_kind", ["sgd", "adamw", "lbfgs"])
def test_closure_steps_match_torch_prune(opt_kind: str) -> None:
    """A 80%-sparse model stepped with closures (LBFGS included) equals torch.nn.utils.prune with the same masks."""
    model = make_model()
    opt = make_opt(model.parameters(), opt_kind)
    ac = ACDC(model, opt, sparsity=0.8, schedule=SPARSE_ONLY, steps_per_epoch=STEPS_PER_EPOCH)
    masks = {n: m.clone() for n, m in ac.masks.items()}
    ref = copy.deepcopy(model)
    ref_opt = make_opt(prune_reference(ref, masks), opt_kind)
    for i in range(6):
        closure_step(model, opt, i)
        ac.step()
        closure_step(ref, ref_opt, i)
    assert ac.phase == "sparse"
    assert ac.sparsity() == pytest.approx(0.8, abs=1e-3)
    want = reference_weights(ref, masks)
    for n, w in ac.masked.weights().items():
        assert not bool(w[~masks[n]].any())
        torch.testing.assert_close(w, want[n], rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- clipping
def test_gradients_are_masked_before_step_and_clip_sees_sparse_norm() -> None:
    model = make_model()
    opt = make_opt(model.parameters(), "sgd")
    ac = ACDC(model, opt, sparsity=0.8, schedule=SPARSE_ONLY, steps_per_epoch=STEPS_PER_EPOCH)
    x, y = batch(0)
    nn.functional.cross_entropy(model(x), y).backward()
    for n, p in ac.masked.params.items():
        assert not bool(p.grad[~ac.masks[n]].any()), f"pruned gradient of {n} visible before step()"
    ref = copy.deepcopy(model)
    ref.zero_grad()
    prune_reference(ref, ac.masks)
    nn.functional.cross_entropy(ref(x), y).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1e9)
    assert float(norm) == float(ref_norm)


@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
def test_clipped_accumulated_steps_match_torch_prune(opt_kind: str, micro_batches: int) -> None:
    """Clip at 0.25 (as the LM recipes) under gradient accumulation: kept weights equal the prune reference."""
    model = make_model()
    opt = make_opt(model.parameters(), opt_kind)
    ac = ACDC(model, opt, sparsity=0.8, schedule=SPARSE_ONLY, steps_per_epoch=STEPS_PER_EPOCH)
    masks = {n: m.clone() for n, m in ac.masks.items()}
    ref = copy.deepcopy(model)
    ref_opt = make_opt(prune_reference(ref, masks), opt_kind)

    def step(m, o, i):
        o.zero_grad()
        x, y = batch(i)
        for xs, ys in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
            (nn.functional.cross_entropy(m(xs), ys) / micro_batches).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.25)
        o.step()

    for i in range(8):
        step(model, opt, i)
        ac.step()
        step(ref, ref_opt, i)
    want = reference_weights(ref, masks)
    for n, w in ac.masked.weights().items():
        assert not bool(w[~masks[n]].any())
        torch.testing.assert_close(w, want[n], rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- wrappers
class AcceleratedLike(torch.optim.Optimizer):
    """The public shape of HF/accelerate's ``AcceleratedOptimizer``: a torch Optimizer subclass that never runs
    ``Optimizer.__init__`` (no hook registries of its own) and forwards to the real optimizer in ``.optimizer``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        return self.optimizer.step(closure)


PHASES = Schedule.from_phases([("dense", 0, 1), ("sparse", 1, 2), ("dense", 2, 3), ("sparse", 3, 4)])


def run_acdc(model, opt, stepper=plain_step, steps: int = 32):
    ac = ACDC(model, opt, sparsity=0.8, schedule=PHASES, steps_per_epoch=STEPS_PER_EPOCH)
    phases = []
    for i in range(steps):
        stepper(model, opt, i)
        ac.step()
        phases.append(ac.phase)
    return ac, phases


@pytest.mark.parametrize("stepper", [plain_step, closure_step])
def test_accelerate_style_wrapped_optimizer_equals_plain(stepper) -> None:
    ref_model = make_model()
    _, ref_phases = run_acdc(ref_model, make_opt(ref_model.parameters(), "sgd"), stepper)
    model = make_model()
    inner = make_opt(model.parameters(), "sgd")
    ac, phases = run_acdc(model, AcceleratedLike(inner), stepper)
    assert ac.optimizer is inner and phases == ref_phases
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.fixture
def gloo_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_zero_redundancy_optimizer_state_is_reset(gloo_group) -> None:
    """ZeroRedundancyOptimizer keeps its state in ``.optim``: the dense-phase reset must reach it."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    ref_model = make_model()
    _, ref_phases = run_acdc(ref_model, make_opt(ref_model.parameters(), "sgd"), steps=20)
    model = make_model()
    zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.SGD, lr=0.05, momentum=0.9,
                                   weight_decay=1e-3)
    ac, phases = run_acdc(model, zero, steps=20)
    assert phases == ref_phases and phases[19] == "dense"  # step 20 re-opened the weights: state reset then
    assert ac.mask_weights is False  # ZeRO over SGD keeps zeros like SGD
    for p in model.parameters():
        assert not bool(zero.optim.state[p]["momentum_buffer"].any())
    plain_step(model, zero, 20)
    plain_step(ref_model, make_opt(ref_model.parameters(), "sgd"), 20)  # fresh SGD = reset state
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def train_sparse(model, steps: int = 3):
    opt = make_opt(model.parameters(), "sgd")
    ac = ACDC(model, opt, sparsity=0.8, schedule=SPARSE_ONLY, steps_per_epoch=STEPS_PER_EPOCH)
    for i in range(steps):
        plain_step(model, opt, i)
        ac.step()
    return ac


def check_masks_travel(wrapped: nn.Module, inner: nn.Module) -> None:
    ac = train_sparse(wrapped)
    sd = ac.state_dict()
    assert set(sd["masks"]) == {"1.weight", "3.weight", "5.weight"}  # no wrapper prefix
    plain = make_model(seed=3)
    ac2 = ACDC(plain, make_opt(plain.parameters(), "sgd"), sparsity=0.8, schedule=SPARSE_ONLY,
               steps_per_epoch=STEPS_PER_EPOCH)
    ac2.load_state_dict(sd)
    assert all(torch.equal(ac2.masks[n], m) for n, m in sd["masks"].items())
    # and back: plain masks (and masks saved with the wrapper's prefix) load into a method on the wrapped model
    ac3 = ACDC(wrapped, make_opt(wrapped.parameters(), "sgd"), sparsity=0.8, schedule=SPARSE_ONLY,
               steps_per_epoch=STEPS_PER_EPOCH)
    ac3.load_state_dict(ac2.state_dict())
    assert all(torch.equal(ac3.masks[n], m) for n, m in sd["masks"].items())
    prefixed = {**sd, "masks": {n: m for n, m in zip(
        [k for k, _ in wrapped.named_parameters() if k.endswith("weight")], sd["masks"].values())}}
    assert set(prefixed["masks"]) != set(sd["masks"])
    ac2.load_state_dict(prefixed)
    assert all(torch.equal(ac2.masks[n], m) for n, m in sd["masks"].items())
    with pytest.raises(ValueError, match=r"unknown parameters \['nope.weight'\]"):
        ac2.load_state_dict({**sd, "masks": {**sd["masks"], "nope.weight": sd["masks"]["1.weight"]}})


def test_masks_travel_between_ddp_and_plain_model(gloo_group) -> None:
    inner = make_model()
    check_masks_travel(nn.parallel.DistributedDataParallel(inner), inner)


def test_masks_travel_between_compiled_and_plain_model() -> None:
    fresh = torch.compile(make_model(), backend="eager")
    ac = train_sparse(fresh, steps=2)  # training through the compiled module masks gradients too
    x, y = batch(0)
    nn.functional.cross_entropy(fresh(x), y).backward()
    for n, p in ac.masked.params.items():
        assert not bool(p.grad[~ac.masks[n]].any())
    inner = make_model()
    compiled = torch.compile(inner, backend="eager")
    assert any("_orig_mod." in n for n, _ in compiled.named_parameters())
    check_masks_travel(compiled, inner)
