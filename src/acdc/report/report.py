"""``acdc report``: figures, tables, a Markdown and a self-contained HTML report of one or more run directories.

A run directory is what :class:`acdc.train.loop.Trainer` writes (``metrics.jsonl``, ``recipe.yaml``, optional
``summary.json``, ``sparse.safetensors``, ``dense.safetensors``, ``memorization.json``); runs still in progress
(no ``summary.json`` yet) are reported from their metrics.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..methods.registry import method_class
from .plots import FIGURES
from .rundata import RunData, epoch_phase, fnum, load_run
from .tables import EMPTY, fmt_pct, fmt_secs, html_table, md_table

__all__ = ["RunData", "load_run", "summary_rows", "agreement_rows", "build_report", "FIGURES", "fmt_pct"]



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
            if epoch_phase(last) == "sparse" and method_class(r.method).yields_sparse:
                sparse = {"val_acc": last.get("val_acc")}
            dvals = [m["val_acc"] for m in r.eligible_dense()]
            dense = {"val_acc": max(dvals)} if dvals else {}
        rows.append({
            "run": r.name,
            "method": r.method,
            "epochs": f"{len(r.metrics)}/{r.planned_epochs()}",
            "target_sparsity": fnum((r.recipe.get("method") or {}).get("sparsity", s.get("target_sparsity"))),
            "sparsity": fnum(final.get("sparsity", last.get("sparsity"))),
            "sparse_acc": fnum(sparse.get("val_acc")),
            "dense_acc": fnum(dense.get("val_acc")),
            "dense_epoch": dense.get("epoch", None if s else r.best_dense_epoch()),
            "dense_rule": dense.get("rule"),
            "val_ppl": fnum(final.get("val_ppl", last.get("val_ppl"))),
            "train_flops_rel": fnum(s.get("train_flops_rel", last.get("train_flops_cum_rel"))),
            "inference_flops_rel": fnum(s.get("inference_flops_rel", last.get("inference_flops_rel"))),
            "wall_time": fnum(s.get("wall_time", last.get("elapsed"))),
            "complete": bool(s),
        })
    return rows


def _pct(v: float | None, digits: int = 2) -> str:
    return fmt_pct(v, digits)


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
        line += [(EMPTY if r["val_ppl"] is None else f"{r['val_ppl']:.2f}")] if lm else []
        tf, inf = r["train_flops_rel"], r["inference_flops_rel"]
        line += [EMPTY if tf is None else f"{tf:.3f}×", EMPTY if inf is None else f"{inf:.3f}×",
                 fmt_secs(r["wall_time"])]
        body.append(line)
    return head, body


def agreement_rows(entries: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Table of agreement results (``acdc agree`` JSON): agreement, cross-entropy, accuracies, breakdown."""
    head = ["pair (A vs B)", "samples", "top-1 agreement", "CE H(p_A, p_B)", "entropy A / B", "acc A", "acc B",
            "both right", "only A right", "only B right", "both wrong (same / diff.)"]
    body = []
    for e in entries:
        label = e.get("label") or f"{Path(str(e.get('model_a', 'A'))).name} vs {Path(str(e.get('model_b', 'B'))).name}"
        bw = EMPTY
        if e.get("both_wrong") is not None:
            bw = f"{_pct(e['both_wrong'])} ({_pct(e.get('both_wrong_same'))} / {_pct(e.get('both_wrong_different'))})"
        body.append([
            label, str(e.get("n", EMPTY)), _pct(fnum(e.get("agreement"))),
            EMPTY if fnum(e.get("cross_entropy_ab")) is None else f"{e['cross_entropy_ab']:.4f}",
            EMPTY if fnum(e.get("entropy_a")) is None else f"{e['entropy_a']:.4f} / {e['entropy_b']:.4f}",
            _pct(fnum(e.get("acc_a"))), _pct(fnum(e.get("acc_b"))), _pct(fnum(e.get("both_right"))),
            _pct(fnum(e.get("only_a_right"))), _pct(fnum(e.get("only_b_right"))), bw,
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
_CSS = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}
.cap{color:#555;font-size:13px}code{background:#f5f5f5;padding:1px 4px}"""


def _notes(runs: Sequence[RunData]) -> list[str]:
    out = []
    for r in runs:
        d = [c for c in r.compressions() if fnum(c.get("mask_diff")) is not None]
        if d:
            out.append(f"{r.name}: mask difference per compression (changed weights of all prunable) = "
                       + ", ".join(fmt_pct(c["mask_diff"], 2, c.get("mask_diff_count"), c.get("mask_size"))
                                   for c in d))
        z = [(m["epoch"], m["dense_zero_fraction"]) for m in r.metrics
             if fnum(m.get("dense_zero_fraction")) is not None]
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


def _wanted_figures(figures: Sequence[str] | None) -> set[str]:
    wanted = set(FIGURES) if figures is None else {f if f.endswith(".png") else f + ".png" for f in figures}
    unknown = sorted(wanted - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; known: {[f.removesuffix('.png') for f in FIGURES]}")
    return wanted


def _agreement_entries(runs: Sequence[RunData], out: Path, agreement: bool, device: str | None) -> list[dict]:
    """Agreement rows: given files (``out`` and each run's ``agreement.json``), then computed (``agreement``) or
    reused from an earlier ``--agreement`` into ``out`` (``agreement_runs.json``, rows of these runs only)."""
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
    elif cache.is_file():
        labels = {r.name for r in runs}
        entries += [e for e in _load_agreement_file(cache) if str(e.get("label", "")).split(": ")[0] in labels]
    return entries


def _markdown(title: str, runs: Sequence[RunData], tables: dict[str, tuple], notes: list[str],
              figures: list[tuple[str, str, str]]) -> str:
    (sh, sb), (ah, ab) = tables["summary"], tables["agreement"]
    md = [f"# {title}", "", "Runs: " + ", ".join(f"`{r.path}`" for r in runs), "", "## Summary", "",
          md_table(sh, sb), "",
          "Accuracies are top-1 on the validation split; FLOPs are relative to the dense model (training: the "
          "whole run against a dense run of the same length).", ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if ab:
        md += ["## Sparse / dense agreement", "", md_table(ah, ab), "",
               "CE is the mean cross-entropy H(p_A, p_B) of B's output distribution against A's (equals A's "
               "entropy when B = A).", ""]
    for fname, t, cap in figures:
        md += [f"## {t}", "", f"![{t}]({fname})", "", cap, ""]
    return "\n".join(md)


def _html(title: str, runs: Sequence[RunData], tables: dict[str, tuple], notes: list[str],
          figures: list[tuple[str, str, str]], out: Path) -> str:
    (sh, sb), (ah, ab) = tables["summary"], tables["agreement"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>Runs: " + ", ".join(f"<code>{html.escape(str(r.path))}</code>" for r in runs) + "</p>",
             "<h2>Summary</h2>", html_table(sh, sb)]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if ab:
        parts += ["<h2>Sparse / dense agreement</h2>", html_table(ah, ab)]
    for fname, t, cap in figures:
        b64 = base64.b64encode((out / fname).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b64}'>"
                     f"<p class='cap'>{html.escape(cap)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


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
    wanted = _wanted_figures(figures)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in run_dirs]
    _unique_names(runs)
    drawn = []
    for fname, (title, caption, fn) in FIGURES.items():
        if fname in wanted and fn(runs, out / fname) is not None:
            drawn.append((fname, title, caption))
    entries = _agreement_entries(runs, out, agreement, device)
    rows = summary_rows(runs)
    tables = {"summary": _summary_table(rows), "agreement": agreement_rows(entries)}
    notes = _notes(runs)
    title = "AC/DC report: " + ", ".join(r.name for r in runs)
    (out / "report.md").write_text(_markdown(title, runs, tables, notes, drawn))
    (out / "report.html").write_text(_html(title, runs, tables, notes, drawn, out))
    return {"figures": [f for f, _, _ in drawn], "summary": rows, "agreement": entries, "out_dir": str(out)}
