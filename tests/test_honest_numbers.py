"""Issue 13: which dense model AC/DC reports, like-for-like `compare` columns, stratified truncated validation,
summaries whose numbers and labels match the data (scikit-learn digits runs and crafted run directories)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import acdc.data as D
from acdc.commands.train import finetune_dense
from acdc.compare import plan_runs, write_tables
from acdc.report import build_report
from acdc.report.plots import phase_segments
from acdc.train.checkpoint import load_metadata
from acdc.train.loop import Trainer
from acdc.train.recipe import parse_recipe

pytestmark = pytest.mark.usefixtures("single_thread")


def _raw(**over) -> dict:
    raw = {
        "name": "honest", "seed": 1, "epochs": 6, "batch_size": 64, "eval_batch_size": 512,
        "model": {"name": "mlp", "in_features": 64, "hidden": [64, 32]}, "data": {"name": "digits"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "lr_schedule": {"name": "cosine"},
        "progress": False,
    }
    raw.update(over)
    return raw


def _metrics(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]


# ---------------------------------------------------------------- 1. AC/DC's dense model
@pytest.fixture(scope="module")
def warmup_best_run(tmp_path_factory, single_thread) -> Path:
    """D0-3 S3-4 D4-5 S5-6 at 99%: the LR drops to ~0 after the warm-up, so the dense phase after the
    compression cannot recover and the warm-up's last epoch is by far the best dense epoch on validation."""
    out = tmp_path_factory.mktemp("warm") / "run"
    raw = _raw(lr_schedule={"name": "step", "milestones": [3], "gamma": 1e-6},
               method={"name": "acdc", "sparsity": 0.99, "schedule": {"phases": [
                   ["dense", 0, 3], ["sparse", 3, 4], ["dense", 4, 5], ["sparse", 5, 6]]}})
    Trainer(parse_recipe(raw), out).run()
    return out


def test_dense_model_never_comes_from_the_warmup(warmup_best_run) -> None:
    d = warmup_best_run
    m = _metrics(d)
    assert [r["phase"] for r in m] == ["dense"] * 3 + ["sparse", "dense", "sparse"]
    assert m[2]["val_acc"] > m[4]["val_acc"] + 0.2  # the warm-up would win a plain best-of-validation pick
    s = json.loads((d / "summary.json").read_text())
    assert s["dense"]["epoch"] == 4 and s["dense"]["val_acc"] == m[4]["val_acc"]
    assert s["dense"]["phase"] == "dense" and s["dense"]["phase_start"] == 4
    assert s["dense"]["compressions_before"] == 1
    assert s["dense"]["rule"] == "best dense epoch on validation after the first compression"
    assert s["dense_best"]["epoch"] == s["dense_last"]["epoch"] == 4
    assert json.loads(load_metadata(d / "dense.safetensors")["epoch"]) == 4
    # finetune-dense starts from that model: the epoch after it
    ft = finetune_dense(d, epochs=1, progress=False)
    assert ft["start_epoch"] == 5


def test_dense_from_any_and_dense_pick_last(tmp_path) -> None:
    phases = [["dense", 0, 1], ["sparse", 1, 2], ["dense", 2, 3], ["sparse", 3, 4], ["dense", 4, 5],
              ["sparse", 5, 6]]
    base = _raw(max_steps_per_epoch=4, method={"name": "acdc", "sparsity": 0.8, "schedule": {"phases": phases}})
    Trainer(parse_recipe(dict(base, dense_pick="last")), tmp_path / "last").run()
    s = json.loads((tmp_path / "last" / "summary.json").read_text())
    m = _metrics(tmp_path / "last")
    assert s["dense"]["epoch"] == s["dense_last"]["epoch"] == 4 and s["dense"]["phase_start"] == 4
    assert s["dense"]["compressions_before"] == 2
    assert s["dense_best"]["val_acc"] == max(m[2]["val_acc"], m[4]["val_acc"])
    assert s["dense"]["rule"] == "last dense epoch after the first compression"
    assert json.loads(load_metadata(tmp_path / "last" / "dense.safetensors")["epoch"]) == 4
    Trainer(parse_recipe(dict(base, dense_from="any")), tmp_path / "any").run()
    s = json.loads((tmp_path / "any" / "summary.json").read_text())
    assert s["dense_best"]["val_acc"] == max(m[e]["val_acc"] for e in (0, 2, 4))  # same training, same numbers
    with pytest.raises(ValueError, match="dense_pick"):
        parse_recipe(dict(base, dense_pick="median"))


def test_dense_baseline_reports_best_and_last(tmp_path) -> None:
    Trainer(parse_recipe(_raw(epochs=3, max_steps_per_epoch=4, method={"name": "dense"})), tmp_path / "d").run()
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    m = _metrics(tmp_path / "d")
    assert s["dense_last"]["epoch"] == 2 and s["dense_last"]["val_acc"] == s["final"]["val_acc"]
    assert s["dense_best"]["val_acc"] == max(r["val_acc"] for r in m)
    assert s["dense"]["rule"] == "best dense epoch on validation"


# ---------------------------------------------------------------- GMP: a label matches its model
def test_gmp_epoch_before_any_pruning_is_dense(tmp_path) -> None:
    raw = _raw(epochs=3, max_steps_per_epoch=4,
               method={"name": "gmp", "sparsity": 0.8, "start_epoch": 0, "end_epoch": 2})
    Trainer(parse_recipe(raw), tmp_path / "g").run()
    m = _metrics(tmp_path / "g")
    assert m[0]["sparsity"] == 0.0 and m[0]["phase"] == "dense"
    assert m[1]["sparsity"] > 0.5 and m[1]["phase"] == "sparse"
    # runs logged before the fix (label "sparse" at sparsity 0) are read by their model too
    old = [dict(m[0], phase="sparse"), *m[1:]]
    assert [p[0] for p in phase_segments(old)] == ["dense", "sparse"]


# ---------------------------------------------------------------- 3. truncated validation
def _sorted_digits() -> D.DataBundle:
    b = D.build({"name": "digits"}, seed=0)
    x, y = b.val.tensors
    order = torch.argsort(y, stable=True)  # class-ordered, as an ImageFolder val set
    b.val = TensorDataset(x[order], y[order])
    return b


def test_stratified_indices_exact_counts_and_seeded() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    idx = D.stratified_indices(labels, 20, seed=0)
    assert np.bincount(labels[idx], minlength=4).tolist() == [10, 6, 3, 1]
    assert np.array_equal(idx, D.stratified_indices(labels, 20, seed=0))
    assert not np.array_equal(idx, D.stratified_indices(labels, 20, seed=1))
    # largest remainder: 7 of [1/3, 1/3, 1/3] -> 3, 2, 2 (ties go to the lower class)
    assert np.bincount(np.repeat(np.arange(3), 10)[D.stratified_indices(np.repeat(np.arange(3), 10), 7)],
                       minlength=3).tolist() == [3, 2, 2]
    assert len(D.stratified_indices(labels, 1000)) == 100


def test_truncated_validation_is_class_stratified(tmp_path) -> None:
    raw = _raw(epochs=1, max_steps_per_epoch=2, eval_batch_size=20, eval_max_batches=2,
               method={"name": "dense"})
    tr = Trainer(parse_recipe(raw), tmp_path / "v", bundle=_sorted_digits())
    tr.setup()
    # what validation scores: at most eval_max_batches batches of the validation loader
    seen = torch.cat([y for i, (_, y) in enumerate(tr.val_loader) if i < 2])
    assert np.bincount(seen.numpy(), minlength=10).tolist() == [4] * 10
    tr2 = Trainer(parse_recipe(raw), tmp_path / "v2", bundle=_sorted_digits())
    tr2.run()
    m = _metrics(tmp_path / "v2")
    assert m[0]["val_samples"] == 40
    assert json.loads((tmp_path / "v2" / "summary.json").read_text())["eval"]["val_samples"] == 40


def test_separate_test_split_is_reported(tmp_path) -> None:
    b = D.build({"name": "digits", "val_fraction": 0.1}, seed=0)
    assert (len(b.train), len(b.val), len(b.test)) == (1259, 179, 359)
    assert b.test is not None
    yv = b.val.tensors[1].numpy()
    assert np.bincount(yv, minlength=10).min() >= 17  # stratified
    raw = _raw(epochs=2, max_steps_per_epoch=3, data={"name": "digits", "val_fraction": 0.1},
               method={"name": "dense"})
    Trainer(parse_recipe(raw), tmp_path / "t").run()
    m = _metrics(tmp_path / "t")
    assert m[0]["test_samples"] == 359 and m[0]["val_samples"] == 179 and 0 <= m[0]["test_acc"] <= 1
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["final"]["test_acc"] == m[-1]["test_acc"] and s["eval"]["report_on"] == "test"
    best = max(m, key=lambda r: r["val_acc"])  # picked on validation...
    assert s["dense_best"]["test_acc"] == best["test_acc"]  # ...reported on test
    with pytest.raises(ValueError, match="val_fraction"):
        D.build({"name": "digits", "val_fraction": 0.9})


# ---------------------------------------------------------------- 2. compare: like-for-like columns
TINY = _raw(epochs=4, method={"name": "acdc", "sparsity": 0.5,
                              "schedule": {"warmup": 1, "sparse": 1, "dense": 1, "final_sparse": 1}})


def _fake_summaries(out: Path, split: str) -> None:
    """dense: final 90, best 95 (epoch 1); acdc: final sparse 88, dense last 91, best 93, fine-tuned 92."""
    def block(acc: float, **kw) -> dict:
        return {f"{split}_acc": acc, "val_acc": acc if split == "val" else acc - 0.5, **kw}

    runs = {
        "dense-s0-seed0": {"final": block(0.90, sparsity=0.0), "dense": block(0.95, epoch=1),
                           "dense_best": block(0.95, epoch=1), "dense_last": block(0.90, epoch=3)},
        "acdc-s0.5-seed0": {"final": block(0.88, sparsity=0.5), "dense": block(0.93, epoch=2),
                            "dense_best": block(0.93, epoch=2), "dense_last": block(0.91, epoch=2)},
    }
    for name, s in runs.items():
        d = out / "runs" / name
        (d / "finetune_dense").mkdir(parents=True)
        s.update(inference_flops_rel=1.0, train_flops_rel=1.0, wall_time=1.0, eval={f"{split}_samples": 360})
        (d / "summary.json").write_text(json.dumps(s))
    (out / "runs" / "acdc-s0.5-seed0" / "finetune_dense" / "summary.json").write_text(
        json.dumps({"final": block(0.92, sparsity=0.0)}))


def _rows(md: str) -> dict[str, list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    return {ln.split(" | ")[0][2:]: [c.strip() for c in ln.strip("| \n").split(" | ")] for ln in lines}


@pytest.mark.parametrize("split", ["val", "test"])
def test_compare_same_rule_for_both_dense_models(tmp_path, split) -> None:
    specs = plan_runs(TINY, ["dense", "acdc"], [0.5], 1)
    _fake_summaries(tmp_path, split)
    write_tables(specs, tmp_path)
    md = (tmp_path / "compare.md").read_text()
    head = next(ln for ln in md.splitlines() if ln.startswith("| method"))
    assert "dense top-1 %: last" in head and "dense top-1 %: best on val" in head
    rows = _rows(md)
    # columns: method, sparsity, seeds, top-1, achieved, dense last, dense best, fine-tuned, ...
    assert rows["dense"][3:8] == ["90.00", "0.000", "90.00", "95.00", "–"]
    assert rows["acdc"][3:8] == ["88.00", "0.500", "91.00", "93.00", "92.00"]
    if split == "val":
        assert "selected on the reported set and is optimistic" in md and "(360 samples)" in md
    else:
        assert "All accuracies are on the test split (360 samples)" in md
    csv = (tmp_path / "compare.csv").read_text().splitlines()
    assert csv[0].split(",")[-2:] == ["reported_on", "eval_samples"] and csv[1].endswith(f",{split},360")


# ---------------------------------------------------------------- 4. summaries
def _crafted_run(d: Path) -> None:
    d.mkdir(parents=True)
    base = {"val_acc": 0.9, "val_loss": 0.3, "sparsity": 0.9, "layer_sparsity": {}}
    lines = [
        dict(base, epoch=0, phase="dense", sparsity=0.0, dense_zero_fraction=3 / 206_736),
        dict(base, epoch=1, phase="sparse", compressions=[{"compression": 0, "epoch": 1.0, "mask_diff": None}]),
        dict(base, epoch=2, phase="dense", sparsity=0.0),
        dict(base, epoch=3, phase="sparse", compressions=[{"compression": 1, "epoch": 3.0,
                                                           "mask_diff": 10 / 206_736, "mask_diff_count": 10,
                                                           "mask_size": 206_736}]),
        dict(base, epoch=4, phase="sparse", compressions=[{"compression": 2, "epoch": 4.0,
                                                           "mask_diff": 5 / 206_736}]),  # older line: no count
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (d / "recipe.yaml").write_text("name: crafted\nepochs: 5\nmethod: {name: acdc, sparsity: 0.9}\n")


def test_report_prints_small_values_with_significant_digits(tmp_path) -> None:
    _crafted_run(tmp_path / "run")
    build_report([tmp_path / "run"], tmp_path / "rep", figures=["accuracy"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "0.0048% (10 of 206,736)" in md
    assert "0.0024%" in md  # 5 / 206,736 without a stored count
    assert "epoch 0: 0.0015%" in md  # zeros left at the end of a dense phase
    assert not re.search(r"(?<![\d.])0\.00%", md)


def test_no_dense_epoch_after_compression_means_no_dense_model(tmp_path) -> None:
    raw = _raw(epochs=2, max_steps_per_epoch=2, method={"name": "acdc", "sparsity": 0.5, "schedule": {
        "phases": [["dense", 0, 1], ["sparse", 1, 2]]}})
    Trainer(parse_recipe(raw), tmp_path / "r").run()
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert "dense" not in s and not (tmp_path / "r" / "dense.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="no dense model: no dense epoch after the first compression"):
        finetune_dense(tmp_path / "r", epochs=1, progress=False)
