"""Mask dynamics: exact differences, densities, zero fractions and the tracker's resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from _recipes import tiny_dense_raw

from acdc.measure.dynamics import MaskTracker, layer_density, mask_difference, prunable_weights, zero_fraction
from acdc.models.transformer import TransformerLM
from acdc.targets import prunable_parameters
from acdc.train.loop import Trainer
from acdc.train.recipe import parse_recipe


def _masks():
    a = torch.tensor([[True, False], [False, True]])  # 4
    b = torch.tensor([True, True, False, False, False, False])  # 6
    return {"l1.weight": a, "l2.weight": b}


def test_identical_and_complementary():
    m = _masks()
    assert mask_difference(m, {k: v.clone() for k, v in m.items()}) == 0.0
    assert mask_difference(m, {k: ~v for k, v in m.items()}) == 1.0


def test_middle_value_per_layer():
    m = _masks()
    new = {k: v.clone() for k, v in m.items()}
    new["l1.weight"][0, 0] = False  # 1 change of 4
    new["l2.weight"][2:5] = True  # 3 changes of 6
    overall, per = mask_difference(m, new, per_layer=True)
    assert overall == 4 / 10
    assert per == {"l1.weight": 0.25, "l2.weight": 0.5}


def test_mismatch_raises_with_names():
    m = _masks()
    with pytest.raises(ValueError, match="l2.weight"):
        mask_difference(m, {"l1.weight": m["l1.weight"]})
    with pytest.raises(ValueError, match="l1.weight"):
        mask_difference(m, {"l1.weight": torch.ones(3, dtype=torch.bool), "l2.weight": m["l2.weight"]})


def test_layer_density_and_zero_fraction():
    assert layer_density(_masks()) == {"l1.weight": 0.5, "l2.weight": 2 / 6}
    w = {"a": torch.tensor([0.0, 1.0, 0.0, 2.0]), "b": torch.tensor([[0.0, 3.0], [4.0, 5.0]])}
    assert layer_density(w) == {"a": 0.5, "b": 0.75}
    overall, per = zero_fraction(w)
    assert overall == 3 / 8
    assert per == {"a": 0.5, "b": 0.25}


def test_prunable_weights_of_model():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    assert list(prunable_weights(model)) == ["0.weight", "3.weight"]
    with torch.no_grad():
        model[3].weight[0] = 0
    assert zero_fraction(model, per_layer=False) == 2 / 8
    assert prunable_weights(nn.Sequential(nn.ReLU())) == {}


def test_prunable_weights_use_the_mask_names_of_tied_weights():
    # the LM head is tied to the embedding: one entry, under the name the training methods' masks use
    lm = TransformerLM(vocab_size=13, n_layers=1, n_heads=2, d_model=8, context=6)
    names = list(prunable_weights(lm))
    assert names == list(prunable_parameters(lm))
    assert "tok_emb.weight" in names and "head.weight" not in names


def test_tracker_and_resume():
    m = _masks()
    tr = MaskTracker()
    r0 = tr.on_compress(10, m)
    assert r0["compression"] == 0 and r0["mask_diff"] is None
    assert r0["density_per_layer"] == {"l1.weight": 0.5, "l2.weight": 2 / 6}
    new = {k: v.clone() for k, v in m.items()}
    new["l2.weight"][5] = True
    state = tr.state_dict()
    tr2 = MaskTracker()
    tr2.load_state_dict(state)
    r1 = tr2.on_compress(20, new)
    assert r1["compression"] == 1
    assert r1["mask_diff"] == 0.1
    assert r1["mask_diff_per_layer"] == {"l1.weight": 0.0, "l2.weight": 1 / 6}
    assert len(tr2.history) == 2


def test_dense_zero_fraction_is_measured_before_the_compression_that_ends_the_phase(tmp_path):
    """Table 8's zeros at the end of a dense phase: the dense model's, not the pruned one that replaces it."""
    raw = tiny_dense_raw(method={"name": "acdc", "sparsity": 0.9, "schedule": {"phases": [["dense", 0, 1],
                                                                                           ["sparse", 1, 2]]}})
    out = Trainer(parse_recipe(raw), tmp_path / "run").run().out_dir
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["phase"] for r in recs] == ["dense", "sparse"]
    assert recs[0]["dense_zero_fraction"] == recs[0]["sparsity"] < 0.01  # trained dense weights: no exact zeros
    assert recs[1]["sparsity"] == pytest.approx(0.9, abs=1e-3) and "dense_zero_fraction" not in recs[1]
