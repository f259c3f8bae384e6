"""``acdc report``: figures, tables, a Markdown and a self-contained HTML report of one or more run directories.

A run directory is what :class:`acdc.train.loop.Trainer` writes (``metrics.jsonl``, ``recipe.yaml``, optional
``summary.json``, ``sparse.safetensors``, ``dense.safetensors``, ``memorization.json``); runs still in progress
(no ``summary.json`` yet) are reported from their metrics.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from . import plots

__all__ = ["RunData", "load_run", "summary_rows", "agreement_rows", "build_report", "FIGURES", "fmt_pct"]

# file name -> (title, caption, plot function)
FIGURES: dict[str, tuple[str, str, Callable[..., Path | None]]] = {
    "accuracy.png": ("Validation accuracy", "Top-1 validation accuracy after each epoch; grey bands are the "
                     "sparse (compressed) phases, stars the dense model (dense.safetensors) (paper Fig. 1 / 5a).",
                     plots.plot_accuracy),
    "mask_difference.png": ("Mask dynamics", "Fraction of prunable weights whose kept/pruned status changed "
                            "between consecutive compressions (paper Fig. 5b; normalised by all prunable weights, "
                            "so two 90%-sparse masks differ by at most 20%).", plots.plot_mask_difference),
    "inference_flops.png": ("Inference FLOPs", "Inference FLOPs per sample relative to the dense model, per epoch "
                            "and at the end of each sparse / dense phase (paper Fig. 6a/b).",
                            plots.plot_inference_flops),
    "training_flops.png": ("Training FLOPs", "Cumulative training FLOPs as a fraction of a full dense run of the "
                           "same length; the dashed diagonal is dense training.", plots.plot_training_flops),
    "layer_density.png": ("Per-layer density", "Non-zero fraction of each prunable layer of the final sparse "
                          "model (sparse.safetensors, else the last metrics line).", plots.plot_layer_density),
    "memorization.png": ("Memorization", "Accuracy on the training samples with corrupted labels, w.r.t. their "
                         "true labels (solid) and the corrupted labels (dashed) (paper Fig. 2b, 8, 9). The ~1/C of "
                         "samples whose random label equals the true one count for both curves.",
                         plots.plot_memorization),
}


def _num(v: Any) -> float | None:
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
        dense = [m for m in self.metrics if plots.epoch_phase(m) == "dense" and _num(m.get("val_acc")) is not None]
        if self.method == "dense" or self.recipe.get("dense_from") == "any":
            return dense
        first = next((m["epoch"] for m in self.metrics if plots.epoch_phase(m) == "sparse"), None)
        return [] if first is None else [m for m in dense if m["epoch"] > first]

    def best_dense_epoch(self) -> int | None:
        d = self.summary.get("dense")
        if isinstance(d, dict) and "epoch" in d:
            return int(d["epoch"])
        if not self.summary and self.method in ("acdc", "dense"):  # in progress: best eligible dense epoch so far
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
        if self.method == "dense":
            return {}, None, {}
        last = self.metrics[-1] if self.metrics else {}
        names = list((last.get("layer_sparsity") or {}).keys())
        sp = self.path / "sparse.safetensors"
        if sp.is_file():
            from ..train.checkpoint import load_tensors

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
            overall = _num(last.get("sparsity"))
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


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
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


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory (needs ``metrics.jsonl``; the rest is optional)."""
    p = Path(run_dir)
    mpath = p / "metrics.jsonl"
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath} not found: `acdc report` needs run directories written by `acdc train`")
    metrics = sorted(_read_jsonl(mpath), key=lambda m: m.get("epoch", 0))
    recipe: dict[str, Any] = {}
    if (p / "recipe.yaml").is_file():
        recipe = yaml.safe_load((p / "recipe.yaml").read_text()) or {}
    summary: dict[str, Any] = {}
    if (p / "summary.json").is_file():
        summary = json.loads((p / "summary.json").read_text())
    mem = None
    if (p / "memorization.json").is_file():
        mem = json.loads((p / "memorization.json").read_text())
    name = str(recipe.get("name") or summary.get("name") or p.name)
    return RunData(path=p, name=name, recipe=recipe, metrics=metrics, summary=summary, memorization=mem)


def _unique_names(runs: Sequence[RunData]) -> None:
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.name} [{r.path.name}]"
    seen: dict[str, int] = {}
    for r in runs:  # still equal (same directory name twice): number them
        k = seen[r.name] = seen.get(r.name, 0) + 1
        if k > 1:
            r.name = f"{r.name} #{k}"


# ---------------------------------------------------------------------- tables
def summary_rows(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """One row per run: method, sparsity, final sparse / best dense accuracy, FLOPs, wall time."""
    rows = []
    for r in runs:
        s, last = r.summary, (r.metrics[-1] if r.metrics else {})
        final = s.get("final") or {}
        sparse = s.get("sparse") or {}
        dense = s.get("dense") or {}
        if not s:  # run in progress: derive from the metrics
            if plots.epoch_phase(last) == "sparse" and r.method != "dense":
                sparse = {"val_acc": last.get("val_acc")}
            dvals = [m["val_acc"] for m in r.eligible_dense()]
            dense = {"val_acc": max(dvals)} if dvals else {}
        rows.append({
            "run": r.name,
            "method": r.method,
            "epochs": f"{len(r.metrics)}/{r.planned_epochs()}",
            "target_sparsity": _num((r.recipe.get("method") or {}).get("sparsity", s.get("target_sparsity"))),
            "sparsity": _num(final.get("sparsity", last.get("sparsity"))),
            "sparse_acc": _num(sparse.get("val_acc")),
            "dense_acc": _num(dense.get("val_acc")),
            "dense_epoch": dense.get("epoch", None if s else r.best_dense_epoch()),
            "dense_rule": dense.get("rule"),
            "val_ppl": _num(final.get("val_ppl", last.get("val_ppl"))),
            "train_flops_rel": _num(s.get("train_flops_rel", last.get("train_flops_cum_rel"))),
            "inference_flops_rel": _num(s.get("inference_flops_rel", last.get("inference_flops_rel"))),
            "wall_time": _num(s.get("wall_time", last.get("elapsed"))),
            "complete": bool(s),
        })
    return rows


def fmt_pct(v: float | None, digits: int = 2, count: int | None = None, total: int | None = None) -> str:
    """A fraction as a percentage that never hides a non-zero value: ``digits`` decimals, or two significant
    digits when those decimals would print 0 (10 of 206,736 -> ``0.0048%``, not ``0.00%``); with ``count`` and
    ``total`` the count follows (``0.0048% (10 of 206,736)``)."""
    if v is None:
        return "—"
    x = 100 * v
    if x != 0 and round(x, digits) == 0:
        digits = 1 - math.floor(math.log10(abs(x)))
    out = f"{x:.{digits}f}%"
    if count is not None and total:
        out += f" ({count:,} of {total:,})"
    return out


def _pct(v: float | None, digits: int = 2) -> str:
    return fmt_pct(v, digits)


def _secs(v: float | None) -> str:
    if v is None:
        return "—"
    if v < 120:
        return f"{v:.1f} s"
    h, rem = divmod(int(round(v)), 3600)
    return f"{h}h {rem // 60:02d}m" if h else f"{rem // 60}m {rem % 60:02d}s"


def _summary_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    lm = any(r["val_ppl"] is not None for r in rows)
    head = ["run", "method", "epochs", "sparsity (target)", "final sparse acc", "dense model acc (epoch)"]
    head += ["final val ppl"] if lm else []
    head += ["train FLOPs (rel. dense)", "inference FLOPs (rel. dense)", "wall time"]
    body = []
    for r in rows:
        sp = _pct(r["sparsity"], 1) + (f" ({_pct(r['target_sparsity'], 0)})" if r["target_sparsity"] else "")
        da = _pct(r["dense_acc"]) + (f" ({r['dense_epoch']})" if r["dense_epoch"] is not None else "")
        line = [r["run"], r["method"], r["epochs"] + ("" if r["complete"] else " (running)"), sp,
                _pct(r["sparse_acc"]), da]
        line += [("—" if r["val_ppl"] is None else f"{r['val_ppl']:.2f}")] if lm else []
        tf, inf = r["train_flops_rel"], r["inference_flops_rel"]
        line += ["—" if tf is None else f"{tf:.3f}×", "—" if inf is None else f"{inf:.3f}×", _secs(r["wall_time"])]
        body.append(line)
    return head, body


def agreement_rows(entries: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Table of agreement results (``acdc agree`` JSON): agreement, cross-entropy, accuracies, breakdown."""
    head = ["pair (A vs B)", "samples", "top-1 agreement", "CE H(p_A, p_B)", "entropy A / B", "acc A", "acc B",
            "both right", "only A right", "only B right", "both wrong (same / diff.)"]
    body = []
    for e in entries:
        label = e.get("label") or f"{Path(str(e.get('model_a', 'A'))).name} vs {Path(str(e.get('model_b', 'B'))).name}"
        bw = "—"
        if e.get("both_wrong") is not None:
            bw = f"{_pct(e['both_wrong'])} ({_pct(e.get('both_wrong_same'))} / {_pct(e.get('both_wrong_different'))})"
        body.append([
            label, str(e.get("n", "—")), _pct(_num(e.get("agreement"))),
            "—" if _num(e.get("cross_entropy_ab")) is None else f"{e['cross_entropy_ab']:.4f}",
            "—" if _num(e.get("entropy_a")) is None else f"{e['entropy_a']:.4f} / {e['entropy_b']:.4f}",
            _pct(_num(e.get("acc_a"))), _pct(_num(e.get("acc_b"))), _pct(_num(e.get("both_right"))),
            _pct(_num(e.get("only_a_right"))), _pct(_num(e.get("only_b_right"))), bw,
        ])
    return head, body


def _load_agreement_file(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    items = data if isinstance(data, list) else data.get("results", [data]) if isinstance(data, dict) else []
    return [d for d in items if isinstance(d, dict) and "agreement" in d]


def compute_run_agreement(run: RunData, device: str | None = None) -> list[dict[str, Any]]:
    """Dense (best checkpoint, and fine-tuned if present) vs final sparse model of one run, on its val split."""
    from ..train.agree import agree_models

    sparse = run.path / "sparse.safetensors"
    out = []
    for dense_name in ("dense.safetensors", "dense_finetuned.safetensors"):
        dense = run.path / dense_name
        if sparse.is_file() and dense.is_file() and (run.path / "recipe.yaml").is_file():
            res = agree_models(dense, sparse, recipe=run.path / "recipe.yaml", device=device)
            res["label"] = f"{run.name}: {dense_name.removesuffix('.safetensors')} vs sparse"
            out.append(res)
    return out


# ---------------------------------------------------------------------- writers
def _md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in [list(head), *body]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


def _html_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{rows}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}
.cap{color:#555;font-size:13px}code{background:#f5f5f5;padding:1px 4px}"""


def _notes(runs: Sequence[RunData]) -> list[str]:
    out = []
    for r in runs:
        d = [c for c in r.compressions() if _num(c.get("mask_diff")) is not None]
        if d:
            out.append(f"{r.name}: mask difference per compression (changed weights of all prunable) = "
                       + ", ".join(fmt_pct(c["mask_diff"], 2, c.get("mask_diff_count"), c.get("mask_size"))
                                   for c in d))
        z = [(m["epoch"], m["dense_zero_fraction"]) for m in r.metrics
             if _num(m.get("dense_zero_fraction")) is not None]
        if z:
            out.append(f"{r.name}: weights exactly zero at the end of dense phases (Table 8) = "
                       + ", ".join(f"epoch {e}: {fmt_pct(v)}" for e, v in z))
        dense = r.summary.get("dense")
        if isinstance(dense, dict) and dense.get("rule"):
            start = f", dense phase from epoch {dense['phase_start']}" if "phase_start" in dense else ""
            out.append(f"{r.name}: dense model = {dense['rule']} (epoch {dense.get('epoch')}{start})")
        if r.memorization and isinstance(r.memorization.get("info"), dict):
            i = r.memorization["info"]
            out.append(f"{r.name}: {i.get('n')} training labels corrupted (seed {i.get('seed')}), "
                       f"{i.get('kept_true_label')} of them drew their true label by chance")
    return out


def build_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    agreement: bool = False,
    device: str | None = None,
    figures: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/report.md``, ``out_dir/report.html`` (images embedded) and the PNG figures.

    Agreement rows come from ``out_dir/agreement.json`` and each run's ``agreement.json`` if present, and with
    ``agreement=True`` are computed for every run having both sparse and dense models (saved to
    ``out_dir/agreement_runs.json``, which later reports into the same directory reuse). ``figures`` restricts
    the figures drawn (names of :data:`FIGURES` with or without ``.png``; default all that have data).
    Returns ``{"figures": [...], "summary": rows, "agreement": entries, "out_dir": ...}``.
    """
    if not run_dirs:
        raise ValueError("no run directories given")
    wanted = set(FIGURES) if figures is None else {f if f.endswith(".png") else f + ".png" for f in figures}
    unknown = sorted(wanted - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; known: {[f.removesuffix('.png') for f in FIGURES]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in run_dirs]
    _unique_names(runs)

    figures = []
    for fname, (title, caption, fn) in FIGURES.items():
        p = fn(runs, out / fname) if fname in wanted else None
        if p is not None:
            figures.append((fname, title, caption))

    entries: list[dict[str, Any]] = []
    for src in [out / "agreement.json", *(r.path / "agreement.json" for r in runs)]:
        if src.is_file():
            entries += _load_agreement_file(src)
    cache = out / "agreement_runs.json"
    if agreement:
        computed = [e for r in runs for e in compute_run_agreement(r, device)]
        if computed:
            cache.write_text(json.dumps(computed, indent=2))
        entries += computed
    elif cache.is_file():  # computed by an earlier `--agreement` into this directory: keep those of these runs
        labels = {r.name for r in runs}
        entries += [e for e in _load_agreement_file(cache) if str(e.get("label", "")).split(": ")[0] in labels]

    rows = summary_rows(runs)
    sh, sb = _summary_table(rows)
    ah, ab = agreement_rows(entries)
    notes = _notes(runs)
    title = "AC/DC report: " + ", ".join(r.name for r in runs)
    md = [f"# {title}", "", "Runs: " + ", ".join(f"`{r.path}`" for r in runs), "", "## Summary", "",
          _md_table(sh, sb), "",
          "Accuracies are top-1 on the validation split; FLOPs are relative to the dense model (training: the "
          "whole run against a dense run of the same length).", ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if entries:
        md += ["## Sparse / dense agreement", "", _md_table(ah, ab), "",
               "CE is the mean cross-entropy H(p_A, p_B) of B's output distribution against A's (equals A's "
               "entropy when B = A).", ""]
    for fname, t, cap in figures:
        md += [f"## {t}", "", f"![{t}]({fname})", "", cap, ""]
    (out / "report.md").write_text("\n".join(md))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>Runs: " + ", ".join(f"<code>{html.escape(str(r.path))}</code>" for r in runs) + "</p>",
             "<h2>Summary</h2>", _html_table(sh, sb)]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if entries:
        parts += ["<h2>Sparse / dense agreement</h2>", _html_table(ah, ab)]
    for fname, t, cap in figures:
        b64 = base64.b64encode((out / fname).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b64}'>"
                     f"<p class='cap'>{html.escape(cap)}</p>")
    parts.append("</body></html>")
    (out / "report.html").write_text("\n".join(parts))
    return {"figures": [f for f, _, _ in figures], "summary": rows, "agreement": entries, "out_dir": str(out)}
