"""``acdc agree``: a model against itself, a sparse/dense pair, --data parsing, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acdc.cli import main
from acdc.data import build
from acdc.train.agree import agree_models, parse_data_arg
from acdc.train.loop import Trainer
from acdc.train.recipe import parse_recipe

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, single_thread) -> Path:
    raw = {
        "name": "agree-tiny", "seed": 1, "epochs": 4, "batch_size": 64, "eval_batch_size": 256,
        "model": {"name": "mlp", "in_features": 64, "hidden": [32]}, "data": {"name": "digits"},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "method": {"name": "acdc", "sparsity": 0.9, "schedule": {"warmup": 1, "sparse": 1, "dense": 1,
                                                                 "final_sparse": 1}},
        "progress": False,
    }
    d = tmp_path_factory.mktemp("agree") / "run"
    Trainer(parse_recipe(raw), d).run()
    return d


def test_model_with_itself(run, tmp_path, capsys):
    out = tmp_path / "a.json"
    m = str(run / "final.safetensors")
    assert main(["agree", m, m, "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top-1 agreement" in text and "100.000%" in text
    res = json.loads(out.read_text())
    assert res["agreement"] == 1.0 and res["disagreement"] == 0.0
    assert res["cross_entropy_ab"] == pytest.approx(res["entropy_a"], abs=1e-9)
    assert res["entropy_a"] > 0 and res["kl_ab"] == pytest.approx(0.0, abs=1e-9)
    assert res["acc_a"] == res["acc_b"] and res["only_a_right"] == 0 and res["only_b_right"] == 0
    assert res["both_wrong_different"] == 0
    assert res["n"] == len(build({"name": "digits"}, seed=1).val)  # the run's validation split
    assert res["data"]["name"] == "digits"


def test_sparse_dense_pair_matches_run_accuracies(run):
    res = agree_models(run / "dense.safetensors", run / "sparse.safetensors")
    summary = json.loads((run / "summary.json").read_text())
    assert res["acc_a"] == pytest.approx(summary["dense"]["val_acc"])
    assert res["acc_b"] == pytest.approx(summary["sparse"]["val_acc"])
    assert 0.0 < res["agreement"] <= 1.0
    parts = res["both_right"] + res["only_a_right"] + res["only_b_right"] + res["both_wrong"]
    assert parts == pytest.approx(1.0)
    assert res["cross_entropy_ab"] >= res["entropy_a"] - 1e-9  # H(p, q) >= H(p)


def test_data_argument_forms(run, tmp_path):
    recipe_data = {"name": "digits", "test_fraction": 0.2}
    assert parse_data_arg("digits", recipe_data) == recipe_data
    assert parse_data_arg("{name: digits, test_fraction: 0.5}", recipe_data)["test_fraction"] == 0.5
    assert parse_data_arg('{"name": "mnist5k"}', recipe_data) == {"name": "mnist5k"}
    f = tmp_path / "d.yaml"
    f.write_text("data: {name: digits, test_fraction: 0.3}\n")
    assert parse_data_arg(str(f), None) == {"name": "digits", "test_fraction": 0.3}
    assert parse_data_arg(None, recipe_data) == recipe_data
    with pytest.raises(ValueError):
        parse_data_arg("[1, 2]", None)
    m = run / "final.safetensors"
    res = agree_models(m, m, data="{name: digits, test_fraction: 0.5}", recipe=run / "recipe.yaml")
    assert res["n"] == len(build({"name": "digits", "test_fraction": 0.5}, seed=1).val) and res["agreement"] == 1.0


def test_missing_recipe_is_a_clean_error(run, tmp_path, capsys):
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((run / "final.safetensors").read_bytes())
    assert main(["agree", str(lone), str(lone)]) == 2
    assert "--recipe" in capsys.readouterr().err
    assert main(["agree", str(lone), str(lone), "--recipe", str(run / "recipe.yaml")]) == 0
