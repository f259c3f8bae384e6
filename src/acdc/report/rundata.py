"""Reading a run directory back: the one reader behind ``acdc report``, ``acdc compare`` and ``acdc memorize``.

A run directory is what :class:`acdc.train.loop.Trainer` writes (``metrics.jsonl``, ``recipe.yaml``, optional
``summary.json``, ``sparse.safetensors``, ``memorization.json``); :func:`load_run` reads it into a :class:`RunData`,
which also answers the questions every reader asks of it (the phase of an epoch, the dense model's epoch, the
final per-layer density).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ..methods.registry import method_class
from ..train.checkpoint import load_tensors

__all__ = ["RunData", "epoch_phase", "fnum", "load_run", "read_jsonl", "read_summary"]


def epoch_phase(m: dict[str, Any]) -> str:
    """The phase of one metrics line, matching its model: a ``sparse`` label on a model with sparsity exactly 0
    (GMP before its ramp, in runs logged before the loop labelled epochs by their model) reads as ``dense``."""
    ph = str(m.get("phase", "dense"))
    sp = m.get("sparsity")
    if ph == "sparse" and isinstance(sp, (int, float)) and sp == 0:
        return "dense"
    return ph


def fnum(v: Any) -> float | None:
    """``v`` as a float when it is a finite number, else None (metrics may hold null or a missing key)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    path: Path
    name: str
    recipe: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    memorization: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        return str(self.summary.get("method") or (self.recipe.get("method") or {}).get("name", "dense"))

    def planned_epochs(self) -> int:
        return int(self.recipe.get("epochs") or self.summary.get("epochs") or len(self.metrics) or 1)

    def compressions(self) -> list[dict[str, Any]]:
        """All compression records of the run, in order."""
        return [c for m in self.metrics for c in (m.get("compressions") or [])]

    def mask_diffs(self) -> list[float]:
        return [float(c["mask_diff"]) for c in self.compressions() if c.get("mask_diff") is not None]

    def eligible_dense(self) -> list[dict[str, Any]]:
        """Metrics lines that may hold the run's dense model (the loop's default rule): every epoch of the dense
        baseline; AC/DC's dense epochs after its first sparse epoch (recipe ``dense_from: any``: every one)."""
        dense = [m for m in self.metrics if epoch_phase(m) == "dense" and fnum(m.get("val_acc")) is not None]
        if not method_class(self.method).yields_sparse or self.recipe.get("dense_from") == "any":
            return dense
        first = next((m["epoch"] for m in self.metrics if epoch_phase(m) == "sparse"), None)
        return [] if first is None else [m for m in dense if m["epoch"] > first]

    def best_dense_epoch(self) -> int | None:
        d = self.summary.get("dense")
        if isinstance(d, dict) and "epoch" in d:
            return int(d["epoch"])
        if not self.summary and method_class(self.method).yields_dense:  # in progress: best eligible dense epoch so far
            dense = self.eligible_dense()
            if dense:
                return int(max(dense, key=lambda m: m["val_acc"])["epoch"])
        return None

    def memorization_n(self) -> int | None:
        if self.memorization and isinstance(self.memorization.get("info"), dict):
            return int(self.memorization["info"].get("n", 0)) or None
        return None

    @cached_property
    def _density(self) -> tuple[dict[str, float], float | None, dict[str, int]]:
        if not method_class(self.method).yields_sparse:
            return {}, None, {}
        last = self.metrics[-1] if self.metrics else {}
        names = list((last.get("layer_sparsity") or {}).keys())
        sp = self.path / "sparse.safetensors"
        if sp.is_file():
            tensors, _ = load_tensors(sp)
            if not names:
                names = [k for k, t in tensors.items() if k.endswith("weight") and t.dim() >= 2]
            out, sizes, nnz, tot = {}, {}, 0, 0
            for k in names:
                if k in tensors:
                    t = tensors[k]
                    z = int((t != 0).sum())
                    out[k] = z / max(1, t.numel())
                    sizes[k] = t.numel()
                    nnz += z
                    tot += t.numel()
            if out:
                return out, nnz / tot, sizes
        if last.get("phase") == "sparse" and last.get("layer_sparsity"):
            overall = fnum(last.get("sparsity"))
            return ({k: 1.0 - float(v) for k, v in last["layer_sparsity"].items()},
                    None if overall is None else 1.0 - overall, {})
        return {}, None, {}

    def final_layer_density(self) -> dict[str, float]:
        """``{layer: non-zero fraction}`` of the final sparse model ({} for a dense run or when unknown)."""
        return self._density[0]

    def final_density(self) -> float | None:
        return self._density[1]

    def final_layer_sizes(self) -> dict[str, int]:
        """``{layer: number of weights}`` when read from sparse.safetensors ({} otherwise)."""
        return self._density[2]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a torn last line (a run killed mid-write) is ignored, another bad line raises."""
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # a run killed mid-write: ignore the torn last line
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON ({e})") from None
    return out


def read_summary(run_dir: str | Path, *, required: bool = True) -> dict[str, Any]:
    """``run_dir/summary.json`` (written when a run finishes); ``{}`` when absent and not ``required``."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path} not found: the run has not finished (continue it with --resume)")
        return {}
    return json.loads(path.read_text())


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory (needs ``metrics.jsonl``; the rest is optional)."""
    p = Path(run_dir)
    mpath = p / "metrics.jsonl"
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath} not found: `acdc report` needs run directories written by `acdc train`")
    metrics = sorted(read_jsonl(mpath), key=lambda m: m.get("epoch", 0))
    recipe: dict[str, Any] = {}
    if (p / "recipe.yaml").is_file():
        recipe = yaml.safe_load((p / "recipe.yaml").read_text()) or {}
    summary = read_summary(p, required=False)
    mem = None
    if (p / "memorization.json").is_file():
        mem = json.loads((p / "memorization.json").read_text())
    name = str(recipe.get("name") or summary.get("name") or p.name)
    return RunData(path=p, name=name, recipe=recipe, metrics=metrics, summary=summary, memorization=mem)
