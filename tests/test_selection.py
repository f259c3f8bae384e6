"""One vocabulary for kept positions (issue 9, item 4): structure × distribution × score, the same keys everywhere.

The same ``structure``/``distribution`` keys give the same masks through AC/DC (a compression), GMP (its final
prune), one-shot and :meth:`Target.compute`, all equal to an independent reference from :mod:`acdc.masks`; the
deprecated ``target`` gives a ``DeprecationWarning`` naming the new keys and the same masks; bad values are one-line
errors naming the key; :class:`Target` is a frozen value whose per-model findings are returned.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from _recipes import tiny_dense_raw
from torch import nn

from acdc import masks as M
from acdc.cli import main
from acdc.methods import GMP, STR, build_method
from acdc.selection import Target, erk, resolve_target, structure_of
from acdc.targets import prunable_parameters
from acdc.train.recipe import RecipeError, load_recipe, parse_recipe

pytestmark = pytest.mark.usefixtures("single_thread")

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
SPARSE_AT_ONCE = {"schedule": {"phases": [["sparse", 0, 2]]}}  # AC/DC compresses at construction


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(),
                         nn.Linear(16, 8))


def build(name: str, options: dict, sparsity: float = 0.8):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    extra = {"acdc": SPARSE_AT_ONCE, "gmp": {"start_epoch": 0, "end_epoch": 0}}.get(name, {})
    return build_method(name, model, opt, steps_per_epoch=4, epochs=2, sparsity=sparsity,
                        options={**extra, **options})


def reference(options: dict, sparsity: float) -> dict[str, torch.Tensor]:
    """The masks the keys mean, from acdc.masks alone."""
    w = {n: p.detach() for n, p in prunable_parameters(net()).items()}
    if "structure" in options:
        return {n: M.n_m(t, 2, 4) for n, t in w.items()}
    dist = options.get("distribution", "global")
    if dist == "global":
        return M.global_magnitude(w, sparsity)
    if dist == "uniform":
        return M.uniform_magnitude(w, sparsity)
    return M.uniform_magnitude(w, erk(w, sparsity, options.get("erk_power_scale", 1.0)))


KEYS = [{"distribution": "global"}, {"distribution": "uniform"}, {"distribution": "erk"},
        {"distribution": "erk", "erk_power_scale": 0.5}, {"structure": "2:4"}]


@pytest.mark.parametrize("options", KEYS, ids=lambda o: "-".join(map(str, o.values())))
def test_same_keys_same_masks_through_every_method_and_the_shared_function(options):
    want = reference(options, 0.8)
    w = {n: p.detach() for n, p in prunable_parameters(net()).items()}
    got = {"Target.compute": resolve_target(**options).compute(w, 0.8)}
    methods = ["acdc", "oneshot"] + ([] if "structure" in options else ["gmp"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new keys are not deprecated
        got.update({name: build(name, options).masks for name in methods})
    for who, masks in got.items():
        assert masks.keys() == want.keys(), who
        for n in want:
            assert torch.equal(masks[n], want[n]), (who, n)
    if options.get("distribution") == "erk":  # ERK is not uniform: the layers differ in sparsity
        assert len({round(float(m.float().mean()), 3) for m in want.values()}) == 3


@pytest.mark.parametrize("old, new", [("uniform", {"distribution": "uniform"}), ("global", {"distribution": "global"}),
                                      ("2:4", {"structure": "2:4"})])
@pytest.mark.parametrize("method", ["acdc", "oneshot", "topkast"])
def test_target_alias_warns_naming_the_new_keys_and_gives_the_same_masks(method, old, new):
    if method == "topkast" and old == "2:4":
        pytest.skip("Top-KAST has no N:M")
    key = next(iter(new))
    with pytest.warns(DeprecationWarning, match=rf"`target: {old}` is deprecated; write `{key}: \"?{old}\"?`"):
        a = build(method, {"target": old})
    b = build(method, new)
    assert a.target == b.target
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in b.masks)


def test_target_alias_in_a_recipe_warns_with_the_recipe_keys():
    raw = tiny_dense_raw(method={"name": "acdc", "sparsity": 0.5, "target": "uniform"})
    with pytest.warns(DeprecationWarning, match=r"`method\.target: uniform` is deprecated; write "
                                                r"`method\.distribution: uniform`"):
        parse_recipe(raw)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_use_the_new_keys(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        r = load_recipe(path)
    assert "target" not in r.method


@pytest.mark.parametrize("method, update, match", [
    ("acdc", {"distribution": "erk2"}, r"`method\.distribution` must be one of global, uniform, erk, got 'erk2'"),
    ("acdc", {"structure": "2:2"}, r"`method\.structure` must be 'unstructured' or 'N:M'"),
    ("acdc", {"structure": 124}, r"`method\.structure` .*quote it in YAML"),  # `structure: 2:4` unquoted in YAML
    ("acdc", {"structure": "2:4", "distribution": "uniform"}, r"`method\.distribution` does not apply"),
    ("acdc", {"target": "global", "distribution": "global"}, r"`method\.target` is the deprecated spelling"),
    ("acdc", {"distribution": "uniform", "erk_power_scale": 2}, r"`method\.erk_power_scale` applies to"),
    ("rigl", {"erk_power_scale": -1}, r"`method\.erk_power_scale` must be a number >= 0"),
    ("gmp", {"structure": "2:4"}, r"gmp: `method\.structure: 2:4` \(N:M\) is not supported"),
    ("rigl", {"structure": "1:4"}, r"rigl: `method\.structure: 1:4` \(N:M\) is not supported"),
    ("str", {"distribution": "uniform"}, r"str: `method\.distribution` does not apply"),
    ("str", {"target": "global"}, r"str: `method\.target` does not apply"),
    ("dense", {"structure": "2:4"}, r"dense: `method\.structure` does not apply"),
])
def test_bad_selection_keys_are_one_line_recipe_errors_naming_the_key(method, update, match):
    block = {"name": method, **({} if method == "dense" else {"sparsity": 0.5}), **update}
    with pytest.raises(RecipeError, match=match) as e:
        parse_recipe(tiny_dense_raw(method=block))
    assert "\n" not in str(e.value)


def test_bad_distribution_through_the_cli_exits_2_writing_nothing(tmp_path, capsys):
    import yaml

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_dense_raw(method={"name": "gmp", "sparsity": 0.5, "distribution": "ERK!"})))
    assert main(["train", str(p), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "`method.distribution`" in err and len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_str_accepts_unstructured_only_and_the_python_api_rejects_unknown_options():
    model = net()
    m = STR(model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.5, structure="unstructured")
    assert m.target == Target()
    with pytest.raises(ValueError, match=r"str: `distribution` does not apply"):
        STR(net(), torch.optim.SGD(net().parameters(), lr=0.1), sparsity=0.5, distribution="erk")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['distribution_'\]"):
        model = net()
        GMP(model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.5, start_step=0, end_step=1,
            update_every=1, distribution_="uniform")


def test_target_is_frozen_and_returns_what_it_finds():
    t = Target(structure="2:4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.structure = "unstructured"
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.skipped = []
    params = {"ok": torch.randn(4, 8), "odd": torch.randn(4, 6), "vec": torch.randn(8)}
    with pytest.warns(UserWarning, match="skipping 2 layer"):
        assert t.prepare(params) == ["odd", "vec"]
    assert t.skipped_layers(params) == ["odd", "vec"] and not hasattr(t, "skipped")
    masks = Target(structure="2:4").compute(params, 0.0)  # pure: nothing from prepare() is needed
    assert masks["odd"].all() and masks["vec"].all() and torch.equal(masks["ok"], M.n_m(params["ok"], 2, 4))
    assert t == Target.parse("2:4") and (t.kind, t.n, t.m) == ("nm", 2, 4)
    assert Target(kind="uniform") == Target(distribution="uniform")  # the older keyword


def test_given_scores_are_ranked_instead_of_the_weights():
    torch.manual_seed(1)
    w = {"a": torch.randn(6, 5), "b": torch.randn(10)}
    scores = {"a": torch.arange(30.0).reshape(6, 5), "b": -torch.arange(10.0)}  # |scores| ranks, not the weights
    for dist, ref in (("global", M.global_magnitude), ("uniform", M.uniform_magnitude)):
        got = Target(distribution=dist).compute(w, 0.6, scores=scores)
        want = ref(scores, 0.6)
        assert all(torch.equal(got[n], want[n]) for n in w)
        assert not all(torch.equal(got[n], ref(w, 0.6)[n]) for n in w)
    allowed = {"a": torch.arange(30).reshape(6, 5) % 2 == 0, "b": torch.ones(10, dtype=torch.bool)}
    got = Target().compute(w, 0.6, scores=scores, allowed=allowed)
    assert int(sum(m.sum() for m in got.values())) == 16 and not bool((got["a"] & ~allowed["a"]).any())


def test_export_reads_the_structure_from_the_new_key_and_the_alias():
    assert structure_of({"structure": "2:4"}) == "2:4"
    assert structure_of({"target": "2:4"}) == "2:4"  # a run recorded before the new keys
    assert structure_of({"distribution": "uniform"}) == structure_of({"target": "global"}) == "unstructured"


def test_erk_under_fsdp_equals_one_process(tmp_path):
    """The sharded (FSDP2) path of Target.compute: ERK is a per-layer selection at ERK's layer sparsities, so 2
    ranks keep bit-identically the masks of one process at every epoch."""
    from _dist import run_ranks
    from test_distributed_fsdp import _fsdp_raw, _record, _train
    from test_distributed_train import _metrics

    from acdc.train.loop import Trainer

    method = {**_fsdp_raw()["method"], "distribution": "erk"}
    raw = _fsdp_raw(method=method, model={"name": "mlp", "in_features": 64, "hidden": [33, 32]})
    Trainer(parse_recipe(raw), tmp_path / "one", epoch_hooks=[_record]).run()
    run_ranks(2, _train, raw, str(tmp_path / "two"))
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert all(r["sharded"] for r in two) and len({r["mask_hash"] for r in one}) >= 2
    assert [r["mask_hash"] for r in one] == [r["mask_hash"] for r in two]
