"""Mask functions: exact agreement with torch.nn.utils.prune, exact counts, tie rule, N:M, chunked path."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from acdc import masks

pytestmark = pytest.mark.usefixtures("single_thread")

SPARSITIES = [0.0, 0.5, 0.9, 0.95, 0.333]


def _random_model(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    c1 = int(torch.randint(2, 9, (1,), generator=g))
    c2 = int(torch.randint(3, 17, (1,), generator=g))
    k = int(torch.randint(1, 4, (1,), generator=g))
    h = int(torch.randint(5, 40, (1,), generator=g))
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, c1, k),
        nn.BatchNorm2d(c1),
        nn.Conv2d(c1, c2, 3, bias=False),
        nn.Flatten(),
        nn.Linear(c2 * 4, h),
        nn.Linear(h, 7),
    )
    # give layers different scales so the global mask is not uniform per layer
    with torch.no_grad():
        for i, m in enumerate(model.modules()):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(0.5 + i)
    return model


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.weight": m.weight.detach()
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def _layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _torch_global(model: nn.Module, sparsity: float) -> list[torch.Tensor]:
    ref = copy.deepcopy(model)
    prune.global_unstructured(_layers(ref), pruning_method=prune.L1Unstructured, amount=sparsity)
    return [m.weight_mask.bool() for m, _ in _layers(ref)]


def _torch_uniform(model: nn.Module, sparsity: float) -> list[torch.Tensor]:
    ref = copy.deepcopy(model)
    out = []
    for m, _ in _layers(ref):
        prune.l1_unstructured(m, "weight", amount=sparsity)
        out.append(m.weight_mask.bool())
    return out


def _kept(ms: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in ms.values())


# ----------------------------------------------------------------------------- agreement with torch.prune


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_equals_torch_global_unstructured(seed, sparsity):
    model = _random_model(seed)
    w = _weights(model)
    ours = masks.global_magnitude(w, sparsity)
    ref = _torch_global(model, sparsity)
    assert list(ours) == list(w)
    for (name, m), r in zip(ours.items(), ref):
        assert m.dtype == torch.bool and m.shape == w[name].shape
        assert torch.equal(m, r), name
    n = sum(t.numel() for t in w.values())
    assert n - _kept(ours) == round(sparsity * n)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_uniform_equals_torch_l1_unstructured(seed, sparsity):
    model = _random_model(seed)
    w = _weights(model)
    ours = masks.uniform_magnitude(w, sparsity)
    for (name, m), r in zip(ours.items(), _torch_uniform(model, sparsity)):
        assert torch.equal(m, r), name
        n = w[name].numel()
        assert n - int(m.sum()) == round(sparsity * n)


def test_global_mask_is_not_uniform_per_layer():
    # sanity: the global mask really is global (a scaled-up layer keeps more than the others)
    torch.manual_seed(0)
    w = {"small": torch.randn(1000) * 0.01, "big": torch.randn(1000)}
    m = masks.global_magnitude(w, 0.5)
    assert int(m["big"].sum()) > 900 and int(m["small"].sum()) < 100
    assert _kept(m) == 1000


def test_global_equals_concat_topk_on_tie_free_weights():
    torch.manual_seed(5)
    w = {"a": torch.randn(64, 33), "b": torch.randn(17, 3, 5, 5), "c": torch.randn(101)}
    flat = torch.cat([t.reshape(-1) for t in w.values()])
    for s in [0.1, 0.5, 0.77, 0.99]:
        keep = flat.numel() - round(s * flat.numel())
        ref = torch.zeros(flat.numel(), dtype=torch.bool)
        ref[torch.topk(flat.abs(), keep).indices] = True
        got = torch.cat([m.reshape(-1) for m in masks.global_magnitude(w, s).values()])
        assert torch.equal(got, ref), s


def test_non_contiguous_and_other_dtypes():
    torch.manual_seed(1)
    base = torch.randn(40, 30)
    m1 = masks.global_magnitude({"w": base.t()}, 0.6)["w"]
    m2 = masks.global_magnitude({"w": base.t().contiguous()}, 0.6)["w"]
    assert m1.shape == (30, 40) and torch.equal(m1, m2)
    assert torch.equal(masks.global_magnitude({"w": base.double()}, 0.6)["w"],
                       masks.global_magnitude({"w": base}, 0.6)["w"])
    half = base.half()
    mh = masks.global_magnitude({"w": half}, 0.6)["w"]
    assert 1200 - int(mh.sum()) == round(0.6 * 1200)
    # requires_grad parameters are fine (detached internally)
    p = nn.Parameter(base.clone())
    assert torch.equal(masks.global_magnitude({"w": p}, 0.6)["w"], masks.global_magnitude({"w": base}, 0.6)["w"])


# ----------------------------------------------------------------------------- exact counts


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 11, 99, 101, 1001, 4097])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.333, 0.5, 0.9, 0.95, 0.999])
def test_exact_pruned_count_python_round(n, sparsity):
    torch.manual_seed(n)
    w = {"a": torch.randn(n)}
    k_pruned = round(sparsity * n)  # Python round: banker's rounding on .5 (n=5, s=0.5 -> 2)
    assert masks.pruned_count(n, sparsity) == k_pruned
    assert n - _kept(masks.global_magnitude(w, sparsity)) == k_pruned
    assert n - _kept(masks.uniform_magnitude(w, sparsity)) == k_pruned


def test_bankers_rounding_counts():
    assert masks.pruned_count(5, 0.5) == 2
    assert masks.pruned_count(7, 0.5) == 4
    assert masks.pruned_count(3, 0.5) == 2
    w = {"a": torch.arange(1.0, 6.0), "b": torch.arange(6.0, 8.0)}  # n = 7, round(3.5) = 4 pruned
    m = masks.global_magnitude(w, 0.5)
    assert torch.equal(m["a"], torch.tensor([False, False, False, False, True]))
    assert torch.equal(m["b"], torch.tensor([True, True]))


def test_odd_total_over_several_tensors():
    torch.manual_seed(3)
    w = {"a": torch.randn(3, 5, 7), "b": torch.randn(13), "c": torch.randn(1, 1)}
    n = 105 + 13 + 1
    for s in [0.25, 0.5, 0.75, 0.9]:
        assert n - _kept(masks.global_magnitude(w, s)) == round(s * n)


# ----------------------------------------------------------------------------- ties


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.333])
def test_all_equal_weights_keep_lowest_global_index(sparsity):
    w = {"a": torch.full((4, 6), 0.7), "b": torch.full((3, 2, 2), -0.7), "c": torch.full((9,), 0.7)}
    n = 24 + 12 + 9
    keep = n - round(sparsity * n)
    m = masks.global_magnitude(w, sparsity)
    flat = torch.cat([x.reshape(-1) for x in m.values()])
    expected = torch.zeros(n, dtype=torch.bool)
    expected[:keep] = True
    assert torch.equal(flat, expected)
    # uniform: each layer keeps a prefix of its own flattened order
    u = masks.uniform_magnitude(w, sparsity)
    for name, t in w.items():
        k = t.numel() - round(sparsity * t.numel())
        exp = torch.zeros(t.numel(), dtype=torch.bool)
        exp[:k] = True
        assert torch.equal(u[name].reshape(-1), exp), name


def test_tie_rule_follows_dict_order():
    w1 = {"x": torch.ones(4), "y": torch.ones(4)}
    w2 = {"y": torch.ones(4), "x": torch.ones(4)}
    m1, m2 = masks.global_magnitude(w1, 0.5), masks.global_magnitude(w2, 0.5)
    assert m1["x"].all() and not m1["y"].any()
    assert m2["y"].all() and not m2["x"].any()


def test_ties_only_at_the_threshold_are_filled():
    # strictly larger values are always kept; equal ones at the threshold fill lowest index first
    w = {"a": torch.tensor([1.0, 3.0, 2.0, 2.0, -2.0, 0.5]), "b": torch.tensor([2.0, 5.0, -2.0])}
    m = masks.global_magnitude(w, 5 / 9)  # prune round(5) -> keep 4: 5, 3 and the first two 2s
    assert torch.equal(m["a"], torch.tensor([False, True, True, True, False, False]))
    assert torch.equal(m["b"], torch.tensor([False, True, False]))


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95, 0.97])
def test_95_percent_exact_zeros_keep_exactly_k(sparsity):
    torch.manual_seed(0)
    w = {}
    for i, shape in enumerate([(64, 3, 3, 3), (128, 64), (1000,)]):
        t = torch.randn(shape)
        t[torch.rand(shape) < 0.95] = 0.0
        if i == 1:
            t[0, :5] = -0.0  # negative zeros tie with zeros
        w[f"l{i}"] = t
    n = sum(t.numel() for t in w.values())
    nonzero = sum(int((t != 0).sum()) for t in w.values())
    keep = n - round(sparsity * n)
    m = masks.global_magnitude(w, sparsity)
    assert _kept(m) == keep
    flat_w = torch.cat([t.reshape(-1) for t in w.values()])
    flat_m = torch.cat([x.reshape(-1) for x in m.values()])
    if keep >= nonzero:
        assert flat_m[flat_w != 0].all()  # every non-zero kept
        zero_idx = torch.nonzero(flat_w == 0).reshape(-1)
        kept_zero = zero_idx[flat_m[zero_idx]]
        assert torch.equal(kept_zero, zero_idx[: keep - nonzero])  # ties at zero: lowest global index first
    else:
        assert not flat_m[flat_w == 0].any()
    for name, t in w.items():
        u = masks.uniform_magnitude({name: t}, sparsity)[name]
        assert t.numel() - int(u.sum()) == round(sparsity * t.numel())


# ----------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_weights_raise(bad):
    w = {"a": torch.randn(10, 10), "b": torch.randn(50)}
    w["b"][7] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        masks.global_magnitude(w, 0.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        masks.uniform_magnitude(w, 0.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        masks.n_m(torch.where(torch.arange(8) == 3, bad, 1.0).reshape(2, 4), 2, 4)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "a", True, False, None, float("nan"), [0.5]])
def test_bad_sparsity_raises(bad):
    w = {"a": torch.randn(10)}
    with pytest.raises(ValueError, match="sparsity"):
        masks.global_magnitude(w, bad)
    with pytest.raises(ValueError, match="sparsity"):
        masks.uniform_magnitude(w, bad)
    with pytest.raises(ValueError, match="sparsity"):
        masks.check_sparsity(bad)


def test_no_weights_and_bad_keep():
    with pytest.raises(ValueError, match="no weights"):
        masks.global_magnitude({}, 0.5)
    with pytest.raises(ValueError, match="cannot keep"):
        masks.topk_mask({"a": torch.randn(4)}, 5)
    assert not masks.topk_mask({"a": torch.randn(4)}, 0)["a"].any()


def test_uniform_per_layer_mapping():
    torch.manual_seed(0)
    w = {"a": torch.randn(100), "b": torch.randn(200)}
    m = masks.uniform_magnitude(w, {"a": 0.1, "b": 0.75})
    assert int(m["a"].sum()) == 90 and int(m["b"].sum()) == 50
    with pytest.raises(ValueError, match=r"sparsity\[b\]"):
        masks.uniform_magnitude(w, {"a": 0.1, "b": 1.0})


# ----------------------------------------------------------------------------- N:M


def _nm_reference(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Brute force: for each (out, *kernel) and each group of m consecutive input channels keep the n largest."""
    keep = torch.zeros(w.shape, dtype=torch.bool)
    cout, cin = w.shape[:2]
    for o in range(cout):
        for pos in itertools.product(*[range(s) for s in w.shape[2:]]):
            for g in range(cin // m):
                chans = list(range(g * m, g * m + m))
                vals = [abs(float(w[(o, c, *pos)])) for c in chans]
                order = sorted(range(m), key=lambda j: (-vals[j], j))  # larger first, ties: lower index
                for j in order[:n]:
                    keep[(o, chans[j], *pos)] = True
    return keep


@pytest.mark.parametrize("seed", [0, 1])
def test_nm_conv_every_group_has_exactly_n(seed):
    torch.manual_seed(seed)
    w = torch.randn(6, 16, 3, 3)
    mask = masks.n_m(w, 2, 4)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    for o in range(6):
        for kh in range(3):
            for kw in range(3):
                for g in range(4):
                    assert int(mask[o, g * 4 : g * 4 + 4, kh, kw].sum()) == 2
    assert torch.equal(mask, _nm_reference(w, 2, 4))
    assert int(mask.sum()) == w.numel() // 2


def test_nm_other_ratios_and_conv1d_3d():
    torch.manual_seed(2)
    for shape, n, m in [((5, 8, 3), 1, 4), ((3, 12, 2, 2, 2), 3, 6), ((4, 16), 1, 8), ((2, 8, 1, 1), 4, 4)]:
        w = torch.randn(shape)
        assert torch.equal(masks.n_m(w, n, m), _nm_reference(w, n, m)), shape


def test_nm_ties_keep_lower_index():
    w = torch.ones(3, 8, 2, 2)
    mask = masks.n_m(w, 2, 4)
    expected = torch.tensor([True, True, False, False] * 2).view(1, 8, 1, 1).expand(3, 8, 2, 2)
    assert torch.equal(mask, expected)
    # partial ties: the larger value first, then the lower index among the equal ones
    w = torch.tensor([[1.0, 2.0, -2.0, 2.0, 0.0, 0.0, 0.0, 0.0]])
    assert masks.n_m(w, 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]
    wz = torch.randn(4, 8) * (torch.rand(4, 8) < 0.3)
    assert torch.equal(masks.n_m(wz, 2, 4), _nm_reference(wz, 2, 4))


def test_nm_linear():
    torch.manual_seed(4)
    lin = nn.Linear(12, 5)
    mask = masks.n_m(lin.weight, 2, 4)
    assert mask.shape == (5, 12)
    assert torch.equal(mask, _nm_reference(lin.weight.detach(), 2, 4))
    assert (mask.view(5, 3, 4).sum(-1) == 2).all()


def test_nm_invalid():
    with pytest.raises(ValueError, match="not a multiple of m=4"):
        masks.n_m(torch.randn(4, 6, 3, 3), 2, 4)
    with pytest.raises(ValueError, match="not a multiple"):
        masks.n_m(torch.randn(4, 3), 2, 4)
    with pytest.raises(ValueError, match="dim >= 2"):
        masks.n_m(torch.randn(8), 2, 4)
    with pytest.raises(ValueError, match="0 < n <= m"):
        masks.n_m(torch.randn(4, 8), 5, 4)
    with pytest.raises(ValueError, match="0 < n <= m"):
        masks.n_m(torch.randn(4, 8), 0, 4)


# ----------------------------------------------------------------------------- chunked path


@pytest.mark.parametrize("zeros", [False, True])
def test_chunking_gives_the_same_mask(monkeypatch, zeros):
    torch.manual_seed(0)
    w = {"a": torch.randn(37, 101), "b": torch.randn(2500), "c": torch.randn(7, 3, 3, 3)}
    if zeros:
        for t in w.values():
            t[torch.rand(t.shape) < 0.9] = 0.0
    ref = {s: masks.global_magnitude(w, s) for s in [0.5, 0.93, 0.333]}
    ref_u = masks.uniform_magnitude(w, 0.93)
    assert w["a"].numel() < masks._CHUNK
    monkeypatch.setattr(masks, "_CHUNK", 1000)  # every tensor now spans several chunks (one partial)
    for s, r in ref.items():
        got = masks.global_magnitude(w, s)
        for name in w:
            assert torch.equal(got[name], r[name]), (s, name)
    got_u = masks.uniform_magnitude(w, 0.93)
    for name in w:
        assert torch.equal(got_u[name], ref_u[name])


def test_chunking_all_ties_spanning_chunks(monkeypatch):
    monkeypatch.setattr(masks, "_CHUNK", 100)
    w = {"a": torch.ones(250), "b": torch.ones(333)}
    m = masks.global_magnitude(w, 0.4)
    keep = 583 - round(0.4 * 583)
    flat = torch.cat([m["a"], m["b"]])
    assert int(flat.sum()) == keep and flat[:keep].all() and not flat[keep:].any()
