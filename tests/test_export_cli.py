"""``acdc export`` on a real (tiny) AC/DC run: each format, and bad input as one-line errors with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from acdc import load_compressed
from acdc.cli import main
from acdc.deploy import load_cpu_sparse, sparse_layers
from acdc.export.compressed import read_sparsity_config
from acdc.export.source import build_model_for
from acdc.train.checkpoint import load_model, load_tensors
from acdc.train.loop import Trainer
from acdc.train.recipe import load_recipe, parse_recipe

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, single_thread) -> Path:
    raw = {
        "name": "export-tiny", "seed": 1, "epochs": 4, "batch_size": 64, "eval_batch_size": 256,
        "model": {"name": "mlp", "in_features": 64, "hidden": [256]}, "data": {"name": "digits"},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "method": {"name": "acdc", "sparsity": 0.9, "schedule": {"warmup": 1, "sparse": 1, "dense": 1,
                                                                 "final_sparse": 1}},
        "progress": False,
    }
    d = tmp_path_factory.mktemp("export") / "run"
    Trainer(parse_recipe(raw), d).run()
    return d


def _fresh(run: Path):
    summary = json.loads((run / "summary.json").read_text())
    return build_model_for(load_recipe(run / "recipe.yaml"), summary["model_io"])


def test_compressed_from_run_dir(run, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    assert main(["export", str(run), "--format", "compressed", "--out", str(out)]) == 0
    assert "global sparsity 90.00%" in capsys.readouterr().out
    ref = _fresh(run)
    load_model(run / "sparse.safetensors", ref)
    got = _fresh(run)
    masks = load_compressed(out, got)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k
    run_masks = load_tensors(run / "last" / "masks.safetensors")[0]
    assert set(masks) == set(run_masks) and all(torch.equal(masks[k], run_masks[k].bool()) for k in masks)
    cfg = read_sparsity_config(out)
    assert cfg["sparsity_structure"] == "unstructured" and cfg["global_sparsity"] == pytest.approx(0.9, abs=1e-4)
    # a compressed file is itself a SOURCE (recipe.yaml beside it)
    (tmp_path / "recipe.yaml").write_text((run / "recipe.yaml").read_text())
    (tmp_path / "summary.json").write_text((run / "summary.json").read_text())
    assert main(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0


def test_onnx_from_run_matches_torch(run, tmp_path):
    pytest.importorskip("onnxruntime")
    from acdc.export import run_onnx

    out = tmp_path / "m.onnx"
    assert main(["export", str(run / "sparse.safetensors"), "--format", "onnx", "--out", str(out)]) == 0
    ref = _fresh(run)
    load_model(run / "sparse.safetensors", ref)
    x = _inputs(run, 5)
    with torch.no_grad():
        assert (run_onnx(out, x) - ref.eval()(x)).abs().max() < 1e-5


def test_cpu_sparse_from_run(run, tmp_path, capsys):
    out = tmp_path / "m.cpusparse.safetensors"
    assert main(["export", str(run), "--format", "cpu-sparse", "--out", str(out), "--batch", "4"]) == 0
    printed = capsys.readouterr().out
    assert "net.1" in printed and "-> " in printed
    ref = _fresh(run)
    load_model(run / "sparse.safetensors", ref)
    fast = load_cpu_sparse(out, _fresh(run))
    x = _inputs(run, 4)
    with torch.inference_mode():
        assert (fast(x) - ref.eval()(x)).abs().max() < 1e-5
    assert set(sparse_layers(fast)) <= {"net.1", "net.3"}


def _inputs(run: Path, n: int) -> torch.Tensor:
    shape = json.loads((run / "summary.json").read_text())["model_io"]["input_shape"]
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(n))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("acdc export: error:") and "\n" not in err
    return err


def test_dense_model_refused_for_cpu_sparse(run, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert main(["export", str(run / "dense.safetensors"), "--format", "cpu-sparse", "--out", str(out)]) == 2
    assert "needs a sparse model" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_wrong_architecture_and_truncated(run, tmp_path, capsys):
    bad = tmp_path / "src"
    bad.mkdir()
    recipe = (run / "recipe.yaml").read_text().replace("- 256", "- 128")
    (bad / "recipe.yaml").write_text(recipe)
    (bad / "sparse.safetensors").write_bytes((run / "sparse.safetensors").read_bytes())
    out = tmp_path / "o"
    out.mkdir()
    assert main(["export", str(bad), "--format", "compressed", "--out", str(out / "c.st")]) == 2
    assert "does not match the model" in _one_line_error(capsys)
    assert main(["export", str(run), "--format", "compressed", "--out", str(bad / "c.st")]) == 0
    capsys.readouterr()
    (bad / "recipe.yaml").write_text((run / "recipe.yaml").read_text())
    data = (bad / "c.st").read_bytes()
    (bad / "c.st").write_bytes(data[: len(data) // 2])
    assert main(["export", str(bad / "c.st"), "--format", "onnx", "--out", str(out / "m.onnx")]) == 2
    assert "truncated" in _one_line_error(capsys)
    assert list(out.iterdir()) == []


def test_nm_violation_writes_nothing(run, tmp_path, capsys):
    out = tmp_path / "c.st"
    for fmt in ("compressed", "onnx", "cpu-sparse"):
        assert main(["export", str(run), "--format", fmt, "--structure", "2:4", "--out", str(out)]) == 2
        assert "2:4 pattern is violated" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []
