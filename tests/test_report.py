"""``acdc report``: figures, Markdown and self-contained HTML from real tiny runs (sklearn digits) and crafted ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from acdc.cli import main
from acdc.report import FIGURES, build_report, load_run, summary_rows
from acdc.report.plots import phase_segments
from acdc.train.loop import Trainer
from acdc.train.recipe import parse_recipe

pytestmark = pytest.mark.usefixtures("single_thread")
PNG = b"\x89PNG\r\n\x1a\n"


def _raw(name: str, method: dict) -> dict:
    return {
        "name": name, "seed": 0, "epochs": 6, "batch_size": 64, "eval_batch_size": 512,
        "model": {"name": "mlp", "in_features": 64, "hidden": [32]}, "data": {"name": "digits"},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "lr_schedule": {"name": "cosine"},
        "method": method, "progress": False,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_thread) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("runs")
    # D0 S1 D2 S3 D4 S5: three compressions, two mask differences
    acdc = {"name": "acdc", "sparsity": 0.8, "target": "global",
            "schedule": {"warmup": 1, "sparse": 1, "dense": 1, "final_sparse": 1}}
    Trainer(parse_recipe(_raw("tiny-acdc", acdc)), base / "acdc").run()
    Trainer(parse_recipe(_raw("tiny-dense", {"name": "dense"})), base / "dense").run()
    return base / "acdc", base / "dense"


def _png_ok(p: Path) -> bool:
    return p.is_file() and p.stat().st_size > 2000 and p.read_bytes()[:8] == PNG


def _legend(p: Path) -> str:
    from PIL import Image

    with Image.open(p) as im:
        return im.text["Description"]


def test_single_run_report(runs, tmp_path):
    acdc_dir, _ = runs
    out = tmp_path / "rep"
    res = build_report([acdc_dir], out)
    expected = {"accuracy.png", "mask_difference.png", "inference_flops.png", "training_flops.png",
                "layer_density.png"}
    assert set(res["figures"]) == expected  # no memorization fields in this run -> no memorization figure
    for f in expected:
        assert _png_ok(out / f), f
        assert "tiny-acdc" in _legend(out / f), f
    assert "sparse (compressed) phase" in _legend(out / "accuracy.png")
    html = (out / "report.html").read_text()
    imgs = re.findall(r"<img [^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(imgs) == len(expected) and all(len(b) > 2000 for b in imgs)
    assert "src='accuracy.png'" not in html  # self-contained
    md = (out / "report.md").read_text()
    for f in expected:
        assert f"]({f})" in md
    assert "tiny-acdc" in md and "| acdc |" in md
    row = res["summary"][0]
    assert row["method"] == "acdc" and row["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert 0 < row["train_flops_rel"] < 1 and row["inference_flops_rel"] == pytest.approx(0.2, abs=0.01)
    assert row["sparse_acc"] is not None and row["dense_acc"] is not None


def test_run_data_reading(runs):
    acdc_dir, dense_dir = runs
    r = load_run(acdc_dir)
    assert [s[0] for s in phase_segments(r.metrics)] == ["dense", "sparse"] * 3
    assert len(r.compressions()) == 3 and len(r.mask_diffs()) == 2
    dens = r.final_layer_density()
    assert set(dens) == {"net.1.weight", "net.3.weight"}
    assert r.final_density() == pytest.approx(0.2, abs=0.01)
    assert load_run(dense_dir).final_layer_density() == {}  # a dense run has no sparse model to show


def test_overlay_two_runs_cli_with_agreement(runs, tmp_path, capsys):
    acdc_dir, dense_dir = runs
    out = tmp_path / "both"
    argv = ["report", str(acdc_dir), str(dense_dir), "--out", str(out), "--agreement",
            "--figures", "accuracy,training_flops"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    for f in ("accuracy.png", "training_flops.png"):
        assert _png_ok(out / f)
    assert not (out / "layer_density.png").exists()
    for f in ("accuracy.png", "training_flops.png"):  # both runs overlaid on one figure, legend = run names
        leg = _legend(out / f)
        assert "tiny-acdc" in leg and "tiny-dense" in leg and "sparse (compressed) phase" in leg
    assert "dense baseline (diagonal)" in _legend(out / "training_flops.png")
    md = (out / "report.md").read_text()
    assert "tiny-acdc" in md and "tiny-dense" in md
    assert "## Sparse / dense agreement" in md and "tiny-acdc: dense vs sparse" in md
    comp = json.loads((out / "agreement_runs.json").read_text())
    assert len(comp) == 1 and 0.5 < comp[0]["agreement"] <= 1.0  # the dense run has no sparse model
    b = comp[0]
    assert b["both_right"] + b["only_a_right"] + b["only_b_right"] + b["both_wrong"] == pytest.approx(1.0)
    rows = summary_rows([load_run(acdc_dir), load_run(dense_dir)])
    assert rows[1]["method"] == "dense" and rows[1]["sparse_acc"] is None
    assert rows[1]["train_flops_rel"] == pytest.approx(1.0)


def test_same_name_runs_are_disambiguated(runs, tmp_path):
    acdc_dir, _ = runs
    res = build_report([acdc_dir, acdc_dir], tmp_path / "dup", figures=[])
    names = [r["run"] for r in res["summary"]]
    assert len(set(names)) == 2 and all(n.startswith("tiny-acdc [") for n in names)


def _crafted(d: Path, *, with_summary: bool) -> Path:
    """A hand-written run: S/D phases, memorization fields, a torn last line (killed mid-write)."""
    d.mkdir(parents=True)
    phases = ["dense", "dense", "sparse", "sparse", "dense", "sparse"]
    lines = []
    for e, ph in enumerate(phases):
        sp = 0.9 if ph == "sparse" else 0.0
        rec = {"epoch": e, "phase": ph, "val_acc": 0.5 + 0.05 * e, "val_loss": 1.0, "sparsity": sp,
               "layer_sparsity": {"a.weight": sp, "b.weight": sp / 2}, "inference_flops_rel": 1 - sp,
               "train_flops_cum_rel": (e + 1) / 6 * (0.5 if e > 1 else 1.0),
               "mem_acc_true": 0.8 if ph == "sparse" else 0.3, "mem_acc_corrupted": 0.1 if ph == "sparse" else 0.6,
               "elapsed": 2.0 * (e + 1)}
        if e in (2, 5):
            rec["compressions"] = [{"compression": int(e == 5), "epoch": float(e),
                                    "mask_diff": None if e == 2 else 0.05}]
        lines.append(json.dumps(rec))
    (d / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 6, "pha')
    (d / "recipe.yaml").write_text("name: crafted\nepochs: 8\nmethod: {name: acdc, sparsity: 0.9}\n")
    (d / "memorization.json").write_text(json.dumps({"indices": [1, 2], "info": {"n": 2, "seed": 0,
                                                                                  "kept_true_label": 0}}))
    if with_summary:
        (d / "summary.json").write_text(json.dumps({"method": "acdc", "final": {"val_acc": 0.7, "sparsity": 0.9}}))
    return d


def test_crafted_in_progress_run_with_memorization(tmp_path):
    run = _crafted(tmp_path / "crafted", with_summary=False)
    out = tmp_path / "rep"
    res = build_report([run], out, figures=["memorization", "layer_density", "mask_difference"])
    assert res["figures"] == ["mask_difference.png", "layer_density.png", "memorization.png"]
    assert "memorization.png" in FIGURES
    for f in res["figures"]:
        assert _png_ok(out / f), f
    leg = _legend(out / "memorization.png")
    assert "crafted (n=2): vs. true label" in leg and "vs. corrupted label" in leg
    r = load_run(run)
    assert len(r.metrics) == 6  # torn last line ignored
    assert r.final_layer_density() == {"a.weight": pytest.approx(0.1), "b.weight": pytest.approx(0.55)}
    row = res["summary"][0]
    assert row["epochs"] == "6/8" and not row["complete"]
    assert row["sparse_acc"] == pytest.approx(0.75) and row["dense_acc"] == pytest.approx(0.7)
    assert row["dense_epoch"] == 4 and r.best_dense_epoch() == 4
    md = (out / "report.md").read_text()
    assert "(running)" in md and "5.00%" in md and "2 training labels corrupted" in md


def test_agreement_json_in_out_dir_is_tabulated(tmp_path):
    run = _crafted(tmp_path / "crafted", with_summary=True)
    out = tmp_path / "rep"
    out.mkdir()
    entry = {"model_a": "x/dense.safetensors", "model_b": "x/sparse.safetensors", "n": 10, "agreement": 0.9,
             "cross_entropy_ab": 0.25, "entropy_a": 0.2, "entropy_b": 0.21, "acc_a": 0.8, "acc_b": 0.7,
             "both_right": 0.65, "only_a_right": 0.15, "only_b_right": 0.05, "both_wrong": 0.15,
             "both_wrong_same": 0.1, "both_wrong_different": 0.05}
    (out / "agreement.json").write_text(json.dumps(entry))
    res = build_report([run], out, figures=["accuracy"])
    assert len(res["agreement"]) == 1 and res["figures"] == ["accuracy.png"]
    md = (out / "report.md").read_text()
    assert "90.00%" in md and "0.2500" in md and "dense.safetensors vs sparse.safetensors" in md
    assert "Sparse / dense agreement" in (out / "report.html").read_text()


def test_missing_run_dir_and_unknown_figure_are_clean_errors(runs, tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "o"), "--figures", "acuracy"]) == 2
    assert "unknown figure" in capsys.readouterr().err
