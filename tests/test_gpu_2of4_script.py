"""The 2:4 GPU script: skips cleanly without CUDA; on a CUDA machine it must convert and match dense logits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_2of4.py"


def test_gpu_2of4_script(capsys):
    spec = importlib.util.spec_from_file_location("gpu_2of4", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--batch", "64"])
    out = capsys.readouterr().out
    if torch.cuda.is_available():
        assert rc == 0 and "within fp16 tolerance" in out
    else:
        assert rc == 0 and out.startswith("skipped: no CUDA")
