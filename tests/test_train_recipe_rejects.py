"""Recipes the README promises to reject: each names the offending key (and the CLI exits 2, writing nothing)."""

from __future__ import annotations

import pytest
import yaml
from _recipes import tiny_dense_raw

from acdc.cli import main
from acdc.train.recipe import RecipeError, load_recipe, parse_recipe

tiny_raw = tiny_dense_raw


@pytest.mark.parametrize("update, match", [
    ({"lr_schedule": {"name": "cosine", "min_lr": -0.1}}, r"`lr_schedule\.min_lr` must be >= 0"),
    ({"lr_schedule": {"name": "step", "milestones": [1], "gamma": -0.5}}, r"`lr_schedule\.gamma` must be > 0"),
    ({"grad_clip": -1.0}, r"`grad_clip` must be >= 0"),
    ({"lr_schedule": {"name": "cosine", "warmup_epochs": -1}}, r"`lr_schedule\.warmup_epochs` must be >= 0"),
    ({"eval_max_batches": -2}, r"`eval_max_batches` must be >= 0"),
    ({"max_steps_per_epoch": -1}, r"`max_steps_per_epoch` must be >= 0"),
    ({"optimizer": {"name": "sgd", "lr": float("inf")}}, r"`optimizer\.lr` must be a finite number"),
    ({"optimizer": {"name": "sgd", "lr": float("nan")}}, r"`optimizer\.lr` must be a finite number"),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": -1e-4}}, r"`optimizer\.weight_decay` must be >= 0"),
    ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": -0.9}}, r"`optimizer\.momentum` must be >= 0"),
    ({"method": {"name": "dense", "sparsity": 0.9}}, r"`method\.sparsity`.*dense"),
    ({"name": "/etc/evil"}, r"`name`.*absolute"),
    ({"name": "../outside"}, r"`name`.*\.\."),
    ({"name": ""}, r"`name`"),
    ({"seed": 2**64}, r"`seed` must be an integer in \[0, 2\*\*32 - 1\]"),
    ({"seed": -1}, r"`seed` must be an integer in \[0, 2\*\*32 - 1\]"),
    ({"num_workers": -1}, r"`num_workers` must be >= 0"),
])
def test_recipe_rejects_name_the_key(update, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(tiny_raw(**update))


def test_recipe_rejects_inf_written_in_yaml(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_raw()).replace("lr: 0.05", "lr: .inf"))
    with pytest.raises(RecipeError, match=r"`optimizer\.lr` must be a finite number, got inf"):
        load_recipe(p)


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "null\n"])
def test_recipe_rejects_empty_file(tmp_path, capsys, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError, match="is empty"):
        load_recipe(p)
    assert main(["train", str(p), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is empty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_recipe_rejects_huge_seed_through_the_cli(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_raw(seed=2**70)))
    assert main(["train", str(p), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "`seed`" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_recipe_accepts_the_boundaries():
    r = parse_recipe(tiny_raw(seed=2**32 - 1, grad_clip=0.0, eval_max_batches=0, name="sub/run",
                              lr_schedule={"name": "cosine", "min_lr": 0.0, "warmup_epochs": 0},
                              method={"name": "dense", "sparsity": 0.0}))
    assert r.seed == 2**32 - 1 and r.name == "sub/run"
