"""Prunable parameter selection, include/exclude globs, and sparsity targets (global, uniform, N:M)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from acdc import ACDC, Schedule, Target, masks, prunable_parameters

pytestmark = pytest.mark.usefixtures("single_thread")


class Zoo(nn.Module):
    """Every kind of layer: only the Conv1d/2d/3d and Linear weights are prunable by default."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv1d = nn.Conv1d(8, 8, 3)
        self.conv2d = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.conv3d = nn.Conv3d(2, 4, 1)
        self.ln = nn.LayerNorm(8)
        self.gn = nn.GroupNorm(2, 8)
        self.block = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8, bias=False))
        self.head = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.ones(3))  # a free parameter, not prunable by default


DEFAULT_ZOO = ["conv1d.weight", "conv2d.weight", "conv3d.weight", "block.0.weight", "block.2.weight", "head.weight"]


def test_default_prunable_set_is_conv_and_linear_weights():
    model = Zoo()
    params = prunable_parameters(model)
    assert list(params) == DEFAULT_ZOO
    for name, p in params.items():
        assert p is model.get_parameter(name)
    assert not any("bias" in n or n.startswith(("bn", "ln", "gn", "emb")) for n in params)


def test_first_and_last_layers_included():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 10))
    assert list(prunable_parameters(model)) == ["0.weight", "3.weight"]


def test_tied_weights_appear_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    assert list(prunable_parameters(Tied())) == ["a.weight"]


def test_multihead_attention_out_proj_is_a_linear():
    mha = nn.MultiheadAttention(8, 2)
    assert list(prunable_parameters(mha)) == ["out_proj.weight"]  # in_proj_weight is not a Linear module's weight


def test_include_replaces_default_set():
    model = Zoo()
    assert list(prunable_parameters(model, include="block.*.weight")) == ["block.0.weight", "block.2.weight"]
    # several patterns, result in model order, no duplicates; include can select non-default parameters
    got = prunable_parameters(model, include=["head.*", "conv2d.weight", "head.weight"])
    assert list(got) == ["conv2d.weight", "head.weight", "head.bias"]
    assert list(prunable_parameters(model, include=["scale"])) == ["scale"]


def test_exclude_removes_from_default_set():
    model = Zoo()
    assert list(prunable_parameters(model, exclude="conv*")) == ["block.0.weight", "block.2.weight", "head.weight"]
    assert list(prunable_parameters(model, exclude=["head.weight", "conv1d.weight"])) == [
        "conv2d.weight", "conv3d.weight", "block.0.weight", "block.2.weight"
    ]
    got = prunable_parameters(model, include="block.*", exclude="*.bias")
    assert list(got) == ["block.0.weight", "block.2.weight"]


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(include="blok.*.weight"), "blok.*.weight"),
        (dict(include=["head.weight", "layer9.*"]), "layer9.*"),
        (dict(exclude="fc.weight"), "fc.weight"),
        (dict(exclude=["head.weight", "bn.weight"]), "bn.weight"),  # bn.weight exists but is not prunable
    ],
)
def test_pattern_matching_nothing_raises_naming_it(kwargs, pattern):
    with pytest.raises(ValueError, match=repr(pattern).replace("*", r"\*").replace(".", r"\.")):
        prunable_parameters(Zoo(), **kwargs)


def test_nothing_left_raises():
    with pytest.raises(ValueError, match="no prunable parameters"):
        prunable_parameters(Zoo(), exclude="*")
    with pytest.raises(ValueError, match="no prunable parameters"):
        prunable_parameters(nn.Sequential(nn.BatchNorm1d(3), nn.LayerNorm(3)))


def test_acdc_uses_include_exclude():
    model = Zoo()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ac = ACDC(model, opt, sparsity=0.5, schedule=Schedule.from_phases([("sparse", 0, 1)]), exclude="head.weight")
    assert "head.weight" not in ac.masks and set(ac.masks) == set(DEFAULT_ZOO) - {"head.weight"}
    assert bool((model.head.weight != 0).all())
    with pytest.raises(ValueError, match="nope"):
        ACDC(Zoo(), opt, sparsity=0.5, schedule=Schedule.from_phases([("sparse", 0, 1)]), include="nope")


# ----------------------------------------------------------------------------- Target


def test_target_parse():
    assert Target.parse("global").kind == "global"
    assert Target.parse(" Uniform ").kind == "uniform"
    t = Target.parse("2:4")
    assert t.is_nm and (t.n, t.m) == (2, 4) and t.nominal_sparsity(0.9) == 0.5
    assert Target.parse(t) is t
    for bad in ["4:2", "0:4", "2:2", "2-4", "topk", "", 3, None]:
        with pytest.raises(ValueError, match="target"):
            Target.parse(bad)


def test_target_compute_global_and_uniform():
    torch.manual_seed(0)
    w = {"a": torch.randn(30, 10), "b": torch.randn(50) * 3}
    g = Target.parse("global").compute(w, 0.8)
    ref = masks.global_magnitude(w, 0.8)
    assert all(torch.equal(g[n], ref[n]) for n in w)
    u = Target.parse("uniform").compute(w, 0.8)
    assert int(u["a"].sum()) == 60 and int(u["b"].sum()) == 10
    t = Target(kind="uniform", layer_sparsity={"a": 0.5})
    u2 = t.compute(w, 0.8)
    assert int(u2["a"].sum()) == 150 and int(u2["b"].sum()) == 10


class NMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)  # 3 input channels: not a multiple of 4
        self.conv = nn.Conv2d(8, 8, 3)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)  # depthwise: 1 input channel per group
        self.fc = nn.Linear(8, 6)
        self.odd = nn.Linear(6, 5)  # 6 % 4 != 0


def test_nm_target_skips_layers_with_warning():
    model = NMNet()
    t = Target.parse("2:4")
    params = prunable_parameters(model)
    with pytest.warns(UserWarning, match=r"skipping 3 layer\(s\).*stem\.weight.*dw\.weight.*odd\.weight"):
        skipped = t.prepare(params)
    assert skipped == ["stem.weight", "dw.weight", "odd.weight"]  # returned: a Target holds no state
    ms = t.compute({n: p.detach() for n, p in params.items()}, 0.9)  # sparsity ignored by N:M
    for n in skipped:
        assert ms[n].all()
    assert int(ms["conv.weight"].sum()) == model.conv.weight.numel() // 2
    assert torch.equal(ms["fc.weight"], masks.n_m(model.fc.weight, 2, 4))


def test_nm_target_in_acdc_lists_skipped():
    torch.manual_seed(0)
    model = NMNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="not a multiple of 4"):
        ac = ACDC(model, opt, sparsity=0.9, target="2:4", schedule=Schedule.from_phases([("sparse", 0, 1)]))
    assert ac.skipped == ["stem.weight", "dw.weight", "odd.weight"]
    assert bool((model.stem.weight != 0).all()) and bool((model.odd.weight != 0).all())
    assert int((model.conv.weight == 0).sum()) == model.conv.weight.numel() // 2
    assert ac.state_dict()["skipped"] == ac.skipped


def test_nm_target_no_warning_when_nothing_skipped():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ac = ACDC(model, opt, sparsity=0.5, structure="2:4", schedule=Schedule.from_phases([("sparse", 0, 1)]))
    assert ac.skipped == []


def test_nm_target_that_skips_every_layer_is_an_error():
    """A 2:4 target on layers none of which has a multiple of 4 input channels would be a 0%-sparse 'sparse' phase."""
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"2:4 skips every prunable layer.*0\.weight.*2\.weight.*'global'"):
        ACDC(model, opt, sparsity=0.5, target="2:4", schedule=Schedule.from_phases([("sparse", 0, 1)]))


def test_numpy_scalar_sparsity_is_accepted():
    import numpy as np

    for s in (np.float32(0.5), np.float64(0.5)):
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ac = ACDC(model, opt, sparsity=s, schedule=Schedule.from_phases([("sparse", 0, 1)]))
        assert ac.sparsity() == 0.5 and type(ac.target_sparsity) is float
        assert masks.check_sparsity(s) == 0.5
    with pytest.raises(ValueError, match="sparsity"):
        masks.check_sparsity(np.bool_(True))


# ----------------------------------------------------------------------------- tied weights (issue 8)
def tied_lm() -> nn.Module:
    from acdc.models import build

    torch.manual_seed(0)
    return build("transformer_lm", num_classes=50, n_layers=1, d_model=16, context=8, dropout=0.0)


def test_tied_weight_aliases_in_include_exclude_and_messages():
    model = tied_lm()
    assert model.head.weight is model.tok_emb.weight
    names = list(prunable_parameters(model))
    assert "tok_emb.weight" in names and "head.weight" not in names  # once, under its first name
    # excluding by the second name removes the tied weight; including by it selects it
    assert "tok_emb.weight" not in prunable_parameters(model, exclude="head.weight")
    assert list(prunable_parameters(model, include="head.weight")) == ["tok_emb.weight"]
    with pytest.raises(ValueError, match=r"tok_emb\.weight \(also head\.weight\)"):
        prunable_parameters(model, exclude="nothing*")


def test_str_thresholds_every_use_of_a_tied_weight():
    """STR on the Transformer LM: the tied output head uses the thresholded weight, not the raw one."""
    from acdc.methods import STR

    model = tied_lm()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = STR(model, opt, sparsity=0.5, s_init=-4.0)
    w_eff = m.effective_weights()["tok_emb.weight"]
    assert 0.1 < float((w_eff == 0).float().mean()) < 0.9
    assert torch.equal(model.head.weight, w_eff) and torch.equal(model.tok_emb.weight, w_eff)
    idx = torch.randint(0, 50, (2, 8))
    model(idx).sum().backward()
    opt.step()
    before = m.effective_weights()["tok_emb.weight"].clone()
    m.finalize()
    assert model.head.weight is model.tok_emb.weight  # still tied, one tensor, thresholded once
    assert torch.equal(model.head.weight.detach(), before)
    assert torch.equal(before != 0, m.masks["tok_emb.weight"])


def test_masks_saved_under_the_other_name_of_a_tied_weight_load():
    model = tied_lm()
    sched = Schedule.from_phases([("sparse", 0, 1)])
    ac = ACDC(model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.5, schedule=sched)
    sd = ac.state_dict()
    sd["masks"]["head.weight"] = sd["masks"].pop("tok_emb.weight")
    model2 = tied_lm()
    ac2 = ACDC(model2, torch.optim.SGD(model2.parameters(), lr=0.1), sparsity=0.5, schedule=sched)
    ac2.load_state_dict(sd)
    assert torch.equal(ac2.masks["tok_emb.weight"], ac.masks["tok_emb.weight"])
