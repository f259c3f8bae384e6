"""``acdc memorize``: corrupted labels, per-epoch memorization metrics, reproducible by seed (sklearn digits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from acdc.cli import main
from acdc.data import build
from acdc.measure.memorization import train_targets
from acdc.memorize import memorize

pytestmark = pytest.mark.usefixtures("single_thread")


def _recipe(tmp: Path) -> Path:
    raw = {
        "name": "mem-tiny", "seed": 0, "epochs": 4, "batch_size": 64, "eval_batch_size": 512,
        "model": {"name": "mlp", "in_features": 64, "hidden": [64]}, "data": {"name": "digits"},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "method": {"name": "acdc", "sparsity": 0.9, "schedule": {"warmup": 1, "sparse": 1, "dense": 1,
                                                                 "final_sparse": 1}},
        "progress": False,
    }
    p = tmp / "mem.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _metrics(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def first(tmp_path_factory, single_thread) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("mem")
    recipe = _recipe(tmp)
    assert main(["memorize", str(recipe), "--out", str(tmp / "a"), "--corrupt", "100", "--seed", "5"]) == 0
    return recipe, tmp / "a"


def test_writes_indices_curves_and_plot(first):
    recipe, d = first
    mem = json.loads((d / "memorization.json").read_text())
    idx = mem["indices"]
    assert len(idx) == 100 == len(set(idx)) and idx == sorted(idx)
    assert mem["info"]["n"] == 100 and mem["info"]["changed"] + mem["info"]["kept_true_label"] == 100
    assert mem["info"]["augment_disabled"] is True
    bundle = build({"name": "digits"}, seed=0)
    true = train_targets(bundle.train)
    assert mem["true_labels"] == true[idx].tolist()
    changed = sum(a != b for a, b in zip(mem["corrupted_labels"], mem["true_labels"]))
    assert changed == mem["info"]["changed"]
    m = _metrics(d)
    assert [r["phase"] for r in m] == ["dense", "sparse", "dense", "sparse"]
    for r in m:
        assert 0.0 <= r["mem_acc_corrupted"] <= 1.0 and 0.0 <= r["mem_acc_true"] <= 1.0
        # samples that kept their true label count as both, so the two can sum above 1 only by that share
        assert r["mem_acc_corrupted"] + r["mem_acc_true"] <= 1.0 + mem["info"]["kept_true_label"] / 100 + 1e-9
    assert [c["mem_acc_true"] for c in mem["curves"]] == [r["mem_acc_true"] for r in m]
    assert yaml.safe_load((d / "recipe.yaml").read_text())["data"]["augment"] is False
    png = d / "memorization.png"
    assert png.is_file() and png.stat().st_size > 2000
    assert (d / "sparse.safetensors").is_file() and (d / "summary.json").is_file()


def test_reproducible_by_seed(first, tmp_path):
    recipe, d = first
    a = json.loads((d / "memorization.json").read_text())
    b = memorize(recipe, tmp_path / "b", n=100, seed=5)
    assert b["indices"] == a["indices"] and b["corrupted_labels"] == a["corrupted_labels"]
    # same data, same seeds: the whole memorization curve repeats on CPU
    assert [c["mem_acc_corrupted"] for c in b["curves"]] == [c["mem_acc_corrupted"] for c in a["curves"]]
    c = memorize(recipe, tmp_path / "c", n=100, seed=6, overrides=["epochs=1", "method={name: dense}"])
    assert c["indices"] != a["indices"]
    assert len(c["curves"]) == 1


def test_corrupted_labels_reach_the_trainer(tmp_path):
    # every training label corrupted: the training accuracy (against the labels the trainer sees) stays near chance
    recipe = _recipe(tmp_path)
    n_train = len(train_targets(build({"name": "digits"}, seed=0).train))
    res = memorize(recipe, tmp_path / "all", n=n_train, seed=0, overrides=["epochs=1", "method={name: dense}"])
    m = _metrics(tmp_path / "all")
    assert res["info"]["n"] == n_train and m[0]["train_acc"] < 0.3
    assert m[0]["mem_acc_true"] + m[0]["mem_acc_corrupted"] > 0


def test_resume_after_interruption_gives_the_same_curves(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    full = memorize(recipe, tmp_path / "full", n=100, seed=5)
    import acdc.train.loop as loop

    real_checkpoint = loop.Trainer._checkpoint
    calls = {"n": 0}

    def dying_checkpoint(self):
        real_checkpoint(self)
        calls["n"] += 1
        if calls["n"] == 2:  # killed right after epoch 1's checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "_checkpoint", dying_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        memorize(recipe, tmp_path / "part", n=100, seed=5)
    monkeypatch.setattr(loop.Trainer, "_checkpoint", real_checkpoint)
    resumed = memorize(recipe, tmp_path / "part", n=100, seed=5, resume=True)
    assert [c["epoch"] for c in resumed["curves"]] == [0, 1, 2, 3]
    assert resumed["curves"] == full["curves"] and resumed["indices"] == full["indices"]
