"""Recipe.with_method: the same recipe with another method, validated again."""

from __future__ import annotations

from pathlib import Path

import pytest

from acdc.train.recipe import RecipeError, load_recipe, parse_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mnist5k_acdc.yaml"


def test_with_method_keeps_own_options_and_replaces_keys():
    r = load_recipe(RECIPE)
    assert r.method_name == "acdc"
    same = r.with_method("acdc", 0.8, seed=r.seed + 3, name="x")
    assert same.method == {**r.method, "sparsity": 0.8}
    assert (same.seed, same.name) == (r.seed + 3, "x")
    raw = r.to_dict()
    raw.update(seed=r.seed + 3, name="x")
    raw["method"] = {**r.method, "sparsity": 0.8}
    assert same == parse_recipe(raw)
    assert r.method["sparsity"] != 0.8  # the original is untouched


def test_with_method_other_method_starts_from_its_name():
    r = load_recipe(RECIPE)
    dense = r.with_method("dense")
    assert dense.method == {"name": "dense"}
    assert dense.epochs == r.epochs and dense.optimizer == r.optimizer
    assert r.with_method("gmp", 0.5).method == {"name": "gmp", "sparsity": 0.5}


def test_with_method_validates():
    r = load_recipe(RECIPE)
    with pytest.raises(RecipeError, match="sparsity"):
        r.with_method("dense", 0.9)
