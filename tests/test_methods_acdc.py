"""ACDC controller: exact zeros under every optimizer, optimizer-state resets, fresh masks per compression,
auto stepping, checkpoints, bad inputs, and no hooks/parametrizations on the model."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from acdc import ACDC, Schedule, masks

pytestmark = pytest.mark.usefixtures("single_thread")

# D0-2, S2-4, D4-6, S6-8 epochs; with 3 steps per epoch: compress after step 6, decompress after 12, compress after 18
SCHED = Schedule.from_phases([("dense", 0, 2), ("sparse", 2, 4), ("dense", 4, 6), ("sparse", 6, 8)])
SPE = 3
COMPRESS_1, DECOMPRESS_1, COMPRESS_2 = 6, 12, 18

OPTIMIZERS = {
    "sgd_nesterov_wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam_l2_amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-4),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.05, weight_decay=1e-4),
    "nadam": lambda ps: torch.optim.NAdam(ps, lr=1e-2),
}


def make_model(seed: int = 0) -> nn.Module:
    """Conv + BN + Linear; tanh keeps every weight's gradient non-zero (no dead units)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Tanh(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.Tanh(),
        nn.Linear(16, 4),
    )
    with torch.no_grad():  # one scale for all layers, so 90% global sparsity leaves every layer some weights
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


def make_data(n_batches: int = 4, seed: int = 123) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n_batches)]


DATA = make_data()


def train_step(model, opt, ac, i, *, manual=True):
    x, y = DATA[i % len(DATA)]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    if manual and ac is not None:
        ac.step()


def weight_params(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in weight_params(model).items()}


def state_tensors(opt):
    """(param, key, tensor) for every tensor in the optimizer state."""
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v):
                yield p, k, v


# ----------------------------------------------------------------------------- sparse phases keep exact zeros


def _check_sparse_invariants(ac, model, target, sparsity):
    params = weight_params(model)
    assert set(ac.masks) == set(params)
    total = sum(p.numel() for p in params.values())
    for name, p in params.items():
        m = ac.masks[name]
        assert (p.detach()[~m] == 0).all(), name
        assert p.grad is not None and (p.grad[~m] == 0).all(), name
        if target == "uniform":
            assert int((~m).sum()) == round(sparsity * m.numel()), name
        if target == "2:4":
            g = m.movedim(1, -1).reshape(-1, 4)
            assert (g.sum(-1) == 2).all(), name
    n_pruned = sum(int((~m).sum()) for m in ac.masks.values())
    if target == "global":
        assert n_pruned == round(sparsity * total)
    if target == "2:4":
        assert n_pruned == total // 2
    # kept weights keep training, so the weights' exact zeros are exactly the pruned ones
    assert sum(int((p.detach() == 0).sum()) for p in params.values()) == n_pruned


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("target", ["global", "uniform", "2:4"])
def test_sparse_phase_keeps_pruned_weights_and_grads_zero(opt_name, target):
    model = make_model()
    opt = OPTIMIZERS[opt_name](model.parameters())
    ac = ACDC(model, opt, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE, target=target)
    assert ac.mask_weights is False  # torch.optim: zeros are kept by grad + state masking alone
    sparsity = 0.5 if target == "2:4" else 0.9  # N:M ignores the requested sparsity: 2:4 prunes half
    for i in range(COMPRESS_1):
        train_step(model, opt, ac, i)
    assert ac.phase == "sparse" and ac.compressions == 1
    before = snapshot(model)
    for i in range(COMPRESS_1, DECOMPRESS_1 - 1):  # the whole first sparse phase (5 optimizer steps)
        train_step(model, opt, ac, i)
        assert ac.phase == "sparse"
        _check_sparse_invariants(ac, model, target, sparsity)
        # optimizer state of pruned entries stays zero too
        for name, p in weight_params(model).items():
            for k, v in opt.state[p].items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    assert (v[~ac.masks[name]] == 0).all(), (name, k)
    after = snapshot(model)
    for name in before:  # kept weights did train
        m = ac.masks[name]
        assert not torch.equal(before[name][m], after[name][m]), name


def test_many_sparse_steps_final_phase():
    """A long final sparse phase (60 steps) with SGD momentum/Nesterov/weight decay: zeros stay exact."""
    model = make_model(1)
    opt = OPTIMIZERS["sgd_nesterov_wd"](model.parameters())
    ac = ACDC(model, opt, sparsity=0.95, schedule=Schedule.from_phases([("dense", 0, 1), ("sparse", 1, 50)]),
              steps_per_epoch=2)
    for i in range(62):
        train_step(model, opt, ac, i)
    assert ac.phase == "sparse"
    _check_sparse_invariants(ac, model, "global", 0.95)
    total = sum(p.numel() for p in weight_params(model).values())
    assert ac.sparsity() == round(0.95 * total) / total


def test_schedule_starting_sparse_compresses_at_construction():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    w0 = snapshot(model)
    ac = ACDC(model, opt, sparsity=0.75, schedule=Schedule.from_phases([("sparse", 0, 2)]), steps_per_epoch=2)
    assert ac.phase == "sparse" and ac.compressions == 1
    expected = masks.global_magnitude(w0, 0.75)
    assert all(torch.equal(ac.masks[n], expected[n]) for n in w0)
    total = sum(t.numel() for t in w0.values())
    assert ac.sparsity() == round(0.75 * total) / total
    for i in range(3):
        train_step(model, opt, ac, i)
    _check_sparse_invariants(ac, model, "global", 0.75)


# ----------------------------------------------------------------------------- optimizer state reset


def _all_state_zero(opt) -> bool:
    return all(not bool(v.any()) for _, _, v in state_tensors(opt))


@pytest.mark.parametrize("opt_name", ["sgd_nesterov_wd", "adam"])
def test_optimizer_state_zero_right_after_decompression(opt_name):
    model = make_model()
    opt = OPTIMIZERS[opt_name](model.parameters())
    ac = ACDC(model, opt, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE)
    keys = {"sgd_nesterov_wd": {"momentum_buffer"}, "adam": {"exp_avg", "exp_avg_sq", "step"}}[opt_name]
    for i in range(DECOMPRESS_1 - 1):
        train_step(model, opt, ac, i)
    # just before the transition: sparse, and every parameter's state is non-zero (BN and biases included)
    assert ac.phase == "sparse"
    assert len(opt.state) == len(list(model.parameters()))
    for p in model.parameters():
        assert keys <= set(opt.state[p])
        for k in keys:
            assert bool(opt.state[p][k].any()), k
    # the step that enters the dense phase
    train_step(model, opt, ac, DECOMPRESS_1 - 1)
    assert ac.phase == "dense" and ac.masks is None and ac.steps == DECOMPRESS_1
    assert _all_state_zero(opt)
    for p in model.parameters():
        for k in keys:
            assert not bool(opt.state[p][k].any()), k
    assert ac.history[-1]["event"] == "decompress" and ac.history[-1]["step"] == DECOMPRESS_1
    # the reset state behaves exactly like a freshly built optimizer: one more step, bit for bit
    model_fresh = copy.deepcopy(model)
    opt_fresh = OPTIMIZERS[opt_name](model_fresh.parameters())
    train_step(model, opt, ac, DECOMPRESS_1)
    train_step(model_fresh, opt_fresh, None, DECOMPRESS_1)
    for (n, p), q in zip(model.named_parameters(), model_fresh.parameters()):
        assert torch.equal(p, q), n
    assert not _all_state_zero(opt)


def test_reset_optimizer_false_keeps_state():
    model = make_model()
    opt = OPTIMIZERS["sgd_nesterov_wd"](model.parameters())
    ac = ACDC(model, opt, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE, reset_optimizer=False)
    for i in range(DECOMPRESS_1):
        train_step(model, opt, ac, i)
    assert ac.phase == "dense"
    assert all(bool(opt.state[p]["momentum_buffer"].any()) for p in model.parameters())


# ----------------------------------------------------------------------------- masks per compression


def test_each_compression_is_a_fresh_global_topk_and_masks_change():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    ac = ACDC(model, opt, sparsity=0.8, schedule=SCHED, steps_per_epoch=SPE)
    found = {}
    for i in range(COMPRESS_2 + 2):
        x, y = DATA[i % len(DATA)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        w = snapshot(model)  # the weights the controller sees when it compresses in ac.step()
        ac.step()
        if ac.steps in (COMPRESS_1, COMPRESS_2):
            assert ac.phase == "sparse"
            expected = masks.global_magnitude(w, 0.8)  # top-k over ALL weights, not the previous support
            for n in w:
                assert torch.equal(ac.masks[n], expected[n]), (ac.steps, n)
            found[ac.steps] = {n: m.clone() for n, m in ac.masks.items()}
    assert ac.compressions == 2
    m1, m2 = found[COMPRESS_1], found[COMPRESS_2]
    assert any(not torch.equal(m1[n], m2[n]) for n in m1)
    # some weights pruned by compression 1 are kept by compression 2
    assert sum(int((~m1[n] & m2[n]).sum()) for n in m1) > 0
    events = [(h["event"], h["step"]) for h in ac.history]
    assert events == [("compress", COMPRESS_1), ("decompress", DECOMPRESS_1), ("compress", COMPRESS_2)]


def test_weight_pruned_in_compression_1_is_kept_in_compression_2():
    """Constructed: weight 0 is the smallest at compression 1, then grows in the dense phase and must come back."""
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 0.2, 3.0, 4.0]]))
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    sched = Schedule.from_phases([("sparse", 0, 1), ("dense", 1, 2), ("sparse", 2, 3)])
    ac = ACDC(lin, opt, sparsity=0.5, schedule=sched)  # steps_per_epoch=None: one ac.step() per epoch
    assert ac.masks["weight"].tolist() == [[False, False, True, True]]
    assert lin.weight.tolist() == [[0.0, 0.0, 3.0, 4.0]]

    def push():  # gradient: grow weight 0 (pruned), shrink weight 2 (kept)
        opt.zero_grad()
        w = lin.weight[0]
        (-10.0 * w[0] + w[2] ** 2).backward()
        opt.step()

    push()  # sparse: weight 0 gets no gradient and stays 0
    assert lin.weight[0, 0].item() == 0.0 and lin.weight.grad[0, 0].item() == 0.0
    ac.step()  # -> dense: everything re-opens
    assert ac.phase == "dense" and ac.masks is None
    push()
    assert lin.weight[0, 0].item() == 10.0  # the previously pruned weight trains again
    ac.step()  # -> sparse: fresh top-2 over all weights
    assert ac.phase == "sparse"
    assert ac.masks["weight"].tolist() == [[True, False, False, True]]
    assert lin.weight[0, 0].item() == 10.0 and lin.weight[0, 2].item() == 0.0


def test_dense_phase_reopens_all_weights():
    model = make_model()
    opt = OPTIMIZERS["sgd_nesterov_wd"](model.parameters())
    ac = ACDC(model, opt, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE)
    for i in range(DECOMPRESS_1):
        train_step(model, opt, ac, i)
        if ac.steps == DECOMPRESS_1 - 1:
            pruned = {n: ~m for n, m in ac.masks.items()}
    assert ac.phase == "dense" and ac.masks is None
    params = weight_params(model)
    for n, p in params.items():  # re-opened weights restart at exactly zero
        assert (p.detach()[pruned[n]] == 0).all()
    train_step(model, opt, ac, DECOMPRESS_1)
    train_step(model, opt, ac, DECOMPRESS_1 + 1)
    assert ac.phase == "dense"
    for n, p in params.items():  # ... and then all of them train
        assert (p.detach()[pruned[n]] != 0).all(), n
        assert (p.grad[pruned[n]] != 0).all(), n
    assert ac.sparsity() == 0.0


def test_phase_follows_schedule_every_step():
    sched = Schedule.paper_cifar(epochs=20)  # D0-1, (S2,D2)x4, S17-19 ... boundaries every 2 epochs
    lin = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(lin.parameters(), lr=0.01, momentum=0.9)
    ac = ACDC(lin, opt, sparsity=0.5, schedule=sched, steps_per_epoch=3)
    x = torch.randn(5, 4)
    for _ in range(20 * 3 + 3):
        opt.zero_grad()
        lin(x).pow(2).mean().backward()
        opt.step()
        ac.step()
        assert ac.phase == sched.phase(ac.steps / 3) == ac.scheduled_phase, ac.steps
    assert ac.compressions == 5
    assert ac.epoch == 21.0


def test_steps_per_epoch_none_means_one_step_per_epoch():
    lin = nn.Linear(8, 4)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    ac = ACDC(lin, opt, sparsity=0.5, schedule=SCHED)
    phases = []
    for _ in range(8):
        phases.append(ac.phase)
        ac.step()
    assert phases == ["dense", "dense", "sparse", "sparse", "dense", "dense", "sparse", "sparse"]
    assert ac.epoch == 8.0 and ac.steps == 8


# ----------------------------------------------------------------------------- auto_step and checkpoints


@pytest.mark.parametrize("opt_name", ["sgd_nesterov_wd", "adam"])
def test_auto_step_matches_manual(opt_name):
    runs = []
    for auto in (False, True):
        model = make_model(3)
        opt = OPTIMIZERS[opt_name](model.parameters())
        ac = ACDC(model, opt, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE, auto_step=auto)
        trace = []
        for i in range(COMPRESS_2 + 3):
            train_step(model, opt, ac, i, manual=not auto)
            trace.append((ac.steps, ac.phase, [p.detach().clone() for p in model.parameters()],
                          None if ac.masks is None else {n: m.clone() for n, m in ac.masks.items()}))
        runs.append((trace, [(h["event"], h["step"]) for h in ac.history]))
    (ta, ha), (tb, hb) = runs
    assert ha == hb and len(ha) == 3
    for a, b in zip(ta, tb):
        assert a[0] == b[0] and a[1] == b[1]
        assert all(torch.equal(x, y) for x, y in zip(a[2], b[2]))
        assert (a[3] is None) == (b[3] is None)
        if a[3] is not None:
            assert all(torch.equal(a[3][n], b[3][n]) for n in a[3])


@pytest.mark.parametrize("save_at", [COMPRESS_1 + 3, DECOMPRESS_1 + 2])  # mid-sparse and mid-dense
def test_state_dict_round_trip_continues_bit_identically(save_at):
    model = make_model(4)
    opt = OPTIMIZERS["sgd_nesterov_wd"](model.parameters())
    ac = ACDC(model, opt, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE)
    for i in range(save_at):
        train_step(model, opt, ac, i)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ac": ac.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)

    model2 = make_model(99)  # different init: everything must come from the checkpoint
    opt2 = OPTIMIZERS["sgd_nesterov_wd"](model2.parameters())
    ac2 = ACDC(model2, opt2, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    ac2.load_state_dict(ckpt["ac"])
    assert ac2.steps == ac.steps and ac2.phase == ac.phase and ac2.compressions == ac.compressions

    for i in range(save_at, COMPRESS_2 + 3):  # crosses at least one phase boundary
        train_step(model, opt, ac, i)
        train_step(model2, opt2, ac2, i)
        assert ac.phase == ac2.phase
        for (n, p), q in zip(model.named_parameters(), model2.parameters()):
            assert torch.equal(p, q), (i, n)
        if ac.masks is not None:
            assert all(torch.equal(ac.masks[n], ac2.masks[n]) for n in ac.masks)
    assert ac.history == ac2.history and ac.compressions == ac2.compressions == 2


def test_load_state_dict_rejects_other_schedule():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sd = ACDC(model, opt, sparsity=0.5, schedule=SCHED, steps_per_epoch=SPE).state_dict()
    model2 = make_model()
    ac2 = ACDC(model2, torch.optim.SGD(model2.parameters(), lr=0.1), sparsity=0.5,
               schedule=Schedule.paper_cifar(epochs=20), steps_per_epoch=SPE)
    with pytest.raises(ValueError, match="different schedule"):
        ac2.load_state_dict(sd)


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_clear_errors():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="sparsity"):
        ACDC(model, opt, sparsity=1.5, schedule=SCHED, steps_per_epoch=SPE)
    with pytest.raises(ValueError, match="sparsity"):
        ACDC(model, opt, sparsity=1.0, schedule=SCHED, steps_per_epoch=SPE)
    with pytest.raises(TypeError, match="schedule must be an acdc.Schedule"):
        ACDC(model, opt, sparsity=0.9, schedule="paper_imagenet", steps_per_epoch=SPE)
    with pytest.raises(TypeError, match="schedule"):
        ACDC(model, opt, sparsity=0.9, schedule=SCHED.to_dict(), steps_per_epoch=SPE)
    for bad in (0, -1, 2.5, "10"):
        with pytest.raises(ValueError, match="steps_per_epoch"):
            ACDC(model, opt, sparsity=0.9, schedule=SCHED, steps_per_epoch=bad)
    # a prunable parameter that the optimizer does not train
    partial = torch.optim.SGD([p for n, p in model.named_parameters() if not n.startswith("7.")], lr=0.1)
    with pytest.raises(ValueError, match=r"\['7\.weight'\] are not in the optimizer"):
        ACDC(model, partial, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE)
    # ... fine once excluded
    ACDC(model, partial, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE, exclude="7.weight")
    with pytest.raises(TypeError, match="model"):
        ACDC(model.state_dict(), opt, sparsity=0.9, schedule=SCHED)
    with pytest.raises(TypeError, match="optimizer"):
        ACDC(model, [opt], sparsity=0.9, schedule=SCHED)
    with pytest.raises(ValueError, match="target"):
        ACDC(model, opt, sparsity=0.9, schedule=SCHED, target="topk")


# ----------------------------------------------------------------------------- no hooks, deepcopy, pickle


def test_no_hooks_or_parametrizations_and_model_copies_in_sparse_phase():
    model = make_model()
    keys_before = list(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ac = ACDC(model, opt, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE, auto_step=True)
    for i in range(COMPRESS_1 + 2):
        train_step(model, opt, ac, i, manual=False)
    assert ac.phase == "sparse"
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
        assert not mod._backward_hooks and not mod._backward_pre_hooks
        assert not parametrize.is_parametrized(mod)
    # the only hooks are the gradient-masking post-accumulate hooks on weights with pruned entries (issue 8)
    hooked = {n for n, p in model.named_parameters() if getattr(p, "_post_accumulate_grad_hooks", None)}
    assert hooked == set(ac.masks)
    for p in model.parameters():
        assert not getattr(p, "_backward_hooks", None)
    assert list(model.state_dict()) == keys_before  # no weight_orig / weight_mask
    assert type(model.get_parameter("0.weight")) is nn.Parameter

    x = DATA[0][0]
    model.eval()
    ref = model(x)
    clone = copy.deepcopy(model)
    assert torch.equal(clone(x), ref)
    unpickled = pickle.loads(pickle.dumps(model))
    assert torch.equal(unpickled(x), ref)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), ref)
    # copies are plain sparse models
    for n, m in ac.masks.items():
        assert (clone.get_parameter(n).detach()[~m] == 0).all()
    for copied in (clone, unpickled):  # copies carry no hooks: plain models
        assert not any(getattr(p, "_post_accumulate_grad_hooks", None) for p in copied.parameters())


# ----------------------------------------------------------------------------- optimizers outside torch.optim


class ShiftSGD(torch.optim.Optimizer):
    """Custom optimizer (not from torch.optim): plain SGD plus a constant drift that moves even zero weights."""

    def __init__(self, params, lr=0.05, drift=1e-3):
        super().__init__(params, dict(lr=lr, drift=drift))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
                    p.add_(group["drift"])
        return None


class MySGD(torch.optim.SGD):
    """A subclass of a torch.optim optimizer defined elsewhere: not trusted to keep zeros."""


def test_custom_optimizer_gets_weights_remasked():
    model = make_model()
    opt = ShiftSGD(model.parameters())
    ac = ACDC(model, opt, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE)
    assert ac.mask_weights is True  # mask_weights="auto"
    for i in range(DECOMPRESS_1 - 1):
        train_step(model, opt, ac, i)
        if ac.steps > COMPRESS_1:  # .grad at the compression step itself still comes from the dense step
            _check_sparse_invariants(ac, model, "global", 0.9)
    # the same run without re-masking lets pruned weights drift away from zero
    model2 = make_model()
    opt2 = ShiftSGD(model2.parameters())
    ac2 = ACDC(model2, opt2, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE, mask_weights=False)
    for i in range(COMPRESS_1 + 1):
        train_step(model2, opt2, ac2, i)
    assert any(bool((p.detach()[~ac2.masks[n]] != 0).any()) for n, p in weight_params(model2).items())


def test_subclass_outside_torch_optim_is_remasked_too():
    model = make_model()
    opt = MySGD(model.parameters(), lr=0.05, momentum=0.9)
    ac = ACDC(model, opt, sparsity=0.9, schedule=SCHED, steps_per_epoch=SPE, auto_step=True)
    assert ac.mask_weights is True
    for i in range(COMPRESS_1 + 3):
        train_step(model, opt, ac, i, manual=False)
    _check_sparse_invariants(ac, model, "global", 0.9)


# ----------------------------------------------------------------------------- load order (issue 8)
@pytest.mark.parametrize("order", ["model_first", "controller_first"])
def test_dense_phase_checkpoint_loads_in_either_order(order):
    """A schedule that starts sparse prunes at construction; loading a dense-phase checkpoint must still give the
    checkpoint's dense weights and momentum, whichever of model-load / controller-build comes first."""
    sched = Schedule.from_phases([("sparse", 0, 1), ("dense", 1, 2), ("sparse", 2, 3)])
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ac = ACDC(model, opt, sparsity=0.9, schedule=sched, steps_per_epoch=SPE)
    for i in range(SPE + 2):
        train_step(model, opt, ac, i)
    assert ac.phase == "dense"
    msd, osd, sd = (copy.deepcopy(x.state_dict()) for x in (model, opt, ac))
    model2 = make_model()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    if order == "model_first":
        model2.load_state_dict(msd)
        opt2.load_state_dict(osd)
        ac2 = ACDC(model2, opt2, sparsity=0.9, schedule=sched, steps_per_epoch=SPE)
        assert ac2.phase == "sparse"  # pruned the loaded weights at construction ...
    else:
        ac2 = ACDC(model2, opt2, sparsity=0.9, schedule=sched, steps_per_epoch=SPE)
        model2.load_state_dict(msd)
        opt2.load_state_dict(osd)
    ac2.load_state_dict(sd)  # ... and the dense checkpoint puts them back
    assert ac2.phase == "dense" and ac2.masks is None
    for k, v in msd.items():
        assert torch.equal(model2.state_dict()[k], v), k
    for p, q in zip(opt.param_groups[0]["params"], opt2.param_groups[0]["params"]):
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])
