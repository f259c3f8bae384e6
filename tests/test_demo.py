"""`make demo` end to end: dense baseline vs AC/DC 90% on the 5,000 real MNIST digits (slow, still run in CI)."""

from __future__ import annotations

import json

import pytest

from acdc.demo import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "AC/DC sparse model: achieved sparsity" in out
    dense = json.loads((tmp_path / "dense" / "summary.json").read_text())
    acdc = json.loads((tmp_path / "acdc" / "summary.json").read_text())
    assert acdc["sparse"]["sparsity"] == pytest.approx(0.9, abs=1e-4)
    # real learning on real digits: both models far above chance (10%), sparse close to dense
    assert dense["final"]["val_acc"] > 0.9
    assert acdc["sparse"]["val_acc"] > 0.9
    assert acdc["dense"]["val_acc"] > 0.9
    for f in ("sparse.safetensors", "dense.safetensors", "metrics.jsonl"):
        assert (tmp_path / "acdc" / f).is_file()
