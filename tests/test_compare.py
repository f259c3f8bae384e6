"""``acdc compare``: table and CSV from every (method, sparsity, seed), mean/std by hand, resume/skip, FLOPs hooks."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn

from acdc.cli import main
from acdc.compare import CSV_COLUMNS, DASH, compare, plan_runs
from acdc.measure.flops import rigl_epoch_flops
from acdc.methods import build_method

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {
    "name": "tiny",
    "seed": 3,
    "epochs": 4,
    "batch_size": 32,
    "eval_batch_size": 512,
    "model": {"name": "mlp", "in_features": 64, "hidden": [32]},
    "data": {"name": "digits"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "lr_schedule": {"name": "cosine"},
    "method": {"name": "acdc", "sparsity": 0.5, "target": "global",
               "schedule": {"warmup": 1, "sparse": 1, "dense": 1, "final_sparse": 1}},
    "max_steps_per_epoch": 4,
    "progress": False,
}
METHODS = ["dense", "acdc", "gmp", "rigl", "set", "topkast", "str", "oneshot"]
OPTS = ["rigl.update_every=2", "set.update_every=2", "topkast.update_every=2"]


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("cmp")
    res = compare(TINY, METHODS, [0.8], 2, out, method_opts=OPTS, progress=False)
    return out, res


def _md_rows(md: str) -> dict[str, list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    return {ln.split(" | ")[0][2:]: [c.strip() for c in ln.strip("| \n").split(" | ")] for ln in lines}


def test_every_run_dir_and_table_cells(done) -> None:
    out, res = done
    runs = sorted(p.name for p in (out / "runs").iterdir())
    expected = sorted([f"dense-s0-seed{k}" for k in range(2)]
                      + [f"{m}-s0.8-seed{k}" for m in METHODS if m != "dense" for k in range(2)])
    assert runs == expected
    assert all((out / "runs" / r / "summary.json").is_file() for r in runs)
    assert (out / "runs" / "acdc-s0.8-seed0" / "finetune_dense" / "summary.json").is_file()
    rows = _md_rows((out / "compare.md").read_text())
    assert set(rows) == set(METHODS)
    for method, cells in rows.items():
        assert len(cells) == 11 and all(cells), (method, cells)
        dense_cells = cells[5:8]  # last, best on val, fine-tuned
        if method == "acdc":
            assert DASH not in dense_cells
        elif method == "dense":
            assert DASH not in dense_cells[:2] and dense_cells[2] == DASH
        else:
            assert dense_cells == [DASH, DASH, DASH], method
        others = cells[:5] + cells[8:]
        assert DASH not in others, (method, cells)
        assert cells[2] == "2"


def test_csv_header_and_hand_computed_mean_std(done) -> None:
    out, _ = done
    with open(out / "compare.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == CSV_COLUMNS
        rows = {(r["method"], float(r["target_sparsity"])): r for r in reader}
    assert len(rows) == len(METHODS)
    accs = [json.loads((out / "runs" / f"gmp-s0.8-seed{k}" / "summary.json").read_text())["final"]["val_acc"]
            for k in range(2)]
    gmp = rows[("gmp", 0.8)]
    assert float(gmp["top1_mean"]) == pytest.approx(100 * (accs[0] + accs[1]) / 2, rel=1e-5)
    assert float(gmp["top1_std"]) == pytest.approx(100 * statistics.stdev(accs), rel=1e-5, abs=1e-9)
    assert float(gmp["top1_std"]) == pytest.approx(100 * abs(accs[0] - accs[1]) / 2 ** 0.5, rel=1e-5, abs=1e-9)
    ft = [json.loads((out / "runs" / f"acdc-s0.8-seed{k}" / "finetune_dense" / "summary.json").read_text())
          ["final"]["val_acc"] for k in range(2)]
    assert float(rows[("acdc", 0.8)]["dense_ft_top1_mean"]) == pytest.approx(100 * sum(ft) / 2, rel=1e-5)
    assert rows[("gmp", 0.8)]["dense_best_top1_mean"] == ""  # no dense model: empty CSV cell
    assert rows[("gmp", 0.8)]["reported_on"] == "val"
    assert float(rows[("gmp", 0.8)]["sparsity_mean"]) == pytest.approx(0.8, abs=0.02)
    assert float(rows[("dense", 0.0)]["train_flops_rel"]) == pytest.approx(1.0)
    # one-shot includes its dense pre-training
    assert float(rows[("oneshot", 0.8)]["train_flops_rel"]) > 1.0
    # the markdown shows the same numbers
    md = _md_rows((out / "compare.md").read_text())
    assert md["gmp"][3] == f"{float(gmp['top1_mean']):.2f} ± {float(gmp['top1_std']):.2f}"


def test_second_invocation_skips_everything(done) -> None:
    out, _ = done
    files = [p for p in (out / "runs").rglob("*") if p.is_file()]
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in files}
    res = compare(TINY, METHODS, [0.8], 2, out, method_opts=OPTS, progress=False)
    assert res.ran == [] and len(res.skipped) == 2 + 2 * (len(METHODS) - 1)
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in files} == before


def test_partial_run_resumes_and_changed_recipe_is_refused(tmp_path: Path) -> None:
    r = dict(TINY, epochs=2, method={"name": "gmp", "sparsity": 0.5})
    compare(r, ["gmp"], [0.5], 1, tmp_path, progress=False)
    d = tmp_path / "runs" / "gmp-s0.5-seed0"
    lines = (d / "metrics.jsonl").read_text().splitlines()
    (d / "summary.json").unlink()  # as if interrupted after the last checkpoint
    res = compare(r, ["gmp"], [0.5], 1, tmp_path, progress=False)
    assert res.ran == ["gmp-s0.5-seed0"]
    assert (d / "metrics.jsonl").read_text().splitlines() == lines  # resumed: no epoch retrained
    with pytest.raises(ValueError, match="different recipe"):
        compare(dict(r, epochs=3), ["gmp"], [0.5], 1, tmp_path, progress=False)


def test_plan_options_apply_only_to_their_method() -> None:
    specs = plan_runs(TINY, ["dense", "acdc", "gmp"], [0.9, 0.95], 2, method_opts=["gmp.start_epoch=1"])
    names = [s.name for s in specs]
    assert names.count("dense-s0-seed0") == 1 and len(specs) == 2 * (1 + 2 * 2)
    by = {s.name: s.recipe for s in specs}
    assert by["acdc-s0.95-seed1"].method["schedule"] == TINY["method"]["schedule"]  # recipe's method block
    assert by["acdc-s0.95-seed1"].sparsity == 0.95 and by["acdc-s0.95-seed1"].seed == 4
    assert by["gmp-s0.9-seed0"].method == {"name": "gmp", "sparsity": 0.9, "start_epoch": 1}
    assert by["dense-s0-seed1"].method == {"name": "dense"}
    other = plan_runs(dict(TINY, method={"name": "gmp", "sparsity": 0.9, "end_epoch": 3}), ["acdc", "gmp"],
                      [0.9], 1)
    assert other[0].recipe.method == {"name": "acdc", "sparsity": 0.9}  # registry default: paper_imagenet
    assert other[1].recipe.method["end_epoch"] == 3
    with pytest.raises(ValueError, match="unknown method"):
        plan_runs(TINY, ["nope"], [0.9], 1)
    with pytest.raises(ValueError, match="not in --methods"):
        plan_runs(TINY, ["gmp"], [0.9], 1, method_opts=["rigl.alpha=0.1"])


def test_cli_compare(tmp_path: Path, capsys) -> None:
    rfile = tmp_path / "r.yaml"
    import yaml

    rfile.write_text(yaml.safe_dump(dict(TINY, epochs=2, method={"name": "dense"})))
    rc = main(["compare", str(rfile), "--methods", "dense,gmp", "--sparsity", "0.5", "--seeds", "1",
               "--out", str(tmp_path / "o"), "--no-progress", "--set", "max_steps_per_epoch=2"])
    assert rc == 0
    assert "| gmp | 0.5 | 1 |" in capsys.readouterr().out
    assert main(["compare", str(rfile), "--methods", "dense,bogus", "--out", str(tmp_path / "o")]) == 2


# ---------------------------------------------------------------------- training FLOPs of RigL / SET / Top-KAST
def _method(name: str, **opts):
    model = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return build_method(name, model, opt, steps_per_epoch=10, epochs=4, sparsity=0.9, options=opts)


def test_rigl_training_flops_per_sample() -> None:
    m = _method("rigl", update_every=5, end_fraction=0.75)  # end_step = 30: epochs 0-2 update, epoch 3 does not
    upd = rigl_epoch_flops(1.0, 10.0, 5)
    assert upd == pytest.approx((15 + 2 + 10) / 6)
    m.steps = 9  # as the loop calls it: before the epoch's last step
    assert m.training_flops_per_sample(1.0, 10.0) == pytest.approx(upd)
    m.steps = 39
    assert m.training_flops_per_sample(1.0, 10.0) == pytest.approx(3.0)
    m2 = _method("rigl", update_every=5, end_fraction=0.625)  # end_step = 25: half of epoch 2 updates
    m2.steps = 29
    assert m2.training_flops_per_sample(1.0, 10.0) == pytest.approx(0.5 * upd + 1.5)
    s = _method("set", update_every=5)
    s.steps = 9
    assert s.training_flops_per_sample(1.0, 10.0) == pytest.approx(3.0)


def test_topkast_training_flops_per_sample() -> None:
    m = _method("topkast", backward_sparsity=0.8)  # d_A = 0.1, d_B = 0.2
    # f_B on the line through (0.1, 2) and (1, 11): 3; total f_A + f_A + f_B = 7
    assert m.training_flops_per_sample(2.0, 11.0) == pytest.approx(7.0)
    assert _method("topkast", backward_sparsity=0.9).training_flops_per_sample(2.0, 11.0) == pytest.approx(6.0)
