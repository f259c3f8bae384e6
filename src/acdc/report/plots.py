"""Figures of AC/DC runs (paper Fig. 1/5a, 5b, 6a/b, 2b and a training-FLOPs / per-layer-density view).

Every function takes a list of :class:`~acdc.report.rundata.RunData` (several runs overlay on one figure, the
legend being the run name) and a PNG path, draws with matplotlib's object API on an Agg canvas (no pyplot
global state, no display needed) and returns the path, or None when no run has the data the figure needs.

x-axis convention: a metrics line of epoch ``e`` (0-based) describes the model at the END of that epoch, so it
is drawn at ``x = e + 1`` ("epochs completed"), and the epoch's phase shades the interval ``[e, e + 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .rundata import RunData, epoch_phase

__all__ = [
    "FIGURES",
    "figure",
    "phase_segments",
    "legend_labels",
    "plot_accuracy",
    "plot_mask_difference",
    "plot_inference_flops",
    "plot_training_flops",
    "plot_layer_density",
    "plot_memorization",
]

# file name -> (title, caption, plot function), each registered by @figure beside its drawing code (report order)
FIGURES: dict[str, tuple[str, str, Callable[..., Path | None]]] = {}


def figure(file: str, title: str, caption: str) -> Callable[[Callable[..., Path | None]], Callable[..., Path | None]]:
    """Register a plot function as ``file`` of the report, with its title and caption."""

    def deco(fn: Callable[..., Path | None]) -> Callable[..., Path | None]:
        FIGURES[file] = (title, caption, fn)
        return fn

    return deco


SPARSE_SHADE = "#9e9e9e"
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def _figure(w: float = 7.5, h: float = 4.2, ncols: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib is a declared extra
        raise ImportError(f"acdc report needs matplotlib ({e}); `pip install 'acdc-train[report]'`") from e
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def legend_labels(fig: Any) -> list[str]:
    """Texts of every legend entry of ``fig`` (also stored in the PNG's ``Description`` text chunk)."""
    out = []
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is not None:
            out += [t.get_text() for t in leg.get_texts() if t.get_text() not in out]
    return out


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = fig.get_suptitle() or next((ax.get_title() for ax in fig.axes if ax.get_title()), "")
    meta = {"Title": title, "Description": "legend: " + " | ".join(legend_labels(fig)), "Software": "acdc report"}
    fig.savefig(path, format="png", metadata=meta)
    return path


def color(i: int) -> str:
    """Line colour of the ``i``-th run."""
    return _COLORS[i % len(_COLORS)]


def phase_segments(metrics: Sequence[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """Consecutive epochs of one phase merged: ``[(phase, start_x, end_x)]`` with epoch ``e`` covering [e, e+1]."""
    segs: list[tuple[str, float, float]] = []
    for m in metrics:
        ph, e = epoch_phase(m), float(m["epoch"])
        if segs and segs[-1][0] == ph and abs(segs[-1][2] - e) < 1e-9:
            segs[-1] = (ph, segs[-1][1], e + 1.0)
        else:
            segs.append((ph, e, e + 1.0))
    return segs


def _sparse_spans(run: RunData) -> list[tuple[float, float]]:
    return [(a, b) for ph, a, b in phase_segments(run.metrics) if ph == "sparse"]


def shade_phases(ax: Any, runs: Sequence[RunData]) -> None:
    """Shade sparse (compressed) phases: once in grey when all runs share them, else per run in its colour."""
    spans = [(i, _sparse_spans(r)) for i, r in enumerate(runs)]
    spans = [(i, s) for i, s in spans if s]
    if not spans:
        return
    if all(s == spans[0][1] for _, s in spans):
        for k, (a, b) in enumerate(spans[0][1]):
            ax.axvspan(a, b, color=SPARSE_SHADE, alpha=0.25, lw=0, zorder=0,
                       label="sparse (compressed) phase" if k == 0 else None)
        return
    for i, s in spans:
        for k, (a, b) in enumerate(s):
            ax.axvspan(a, b, color=color(i), alpha=0.10, lw=0, zorder=0,
                       label=f"sparse phases: {runs[i].name}" if k == 0 else None)


def _xy(run: RunData, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for m in run.metrics:
        v = m.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(float(m["epoch"]) + 1.0)
            ys.append(float(v))
    return xs, ys


def _runs_with(runs: Sequence[RunData], key: str) -> list[tuple[int, RunData]]:
    """``(index, run)`` of the runs with at least one numeric ``key`` in their metrics (index = colour)."""
    return [(i, r) for i, r in enumerate(runs) if _xy(r, key)[0]]


def _epoch_axis(ax: Any, runs: Sequence[RunData]) -> None:
    from matplotlib.ticker import MaxNLocator

    n = max((float(m["epoch"]) + 1 for r in runs for m in r.metrics), default=1.0)
    ax.set_xlim(0, n)
    ax.set_xlabel("epoch (metrics at the end of each epoch)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


@figure("accuracy.png", "Validation accuracy",
        "Top-1 validation accuracy after each epoch; grey bands are the sparse (compressed) phases, stars the "
        "dense model (dense.safetensors) (paper Fig. 1 / 5a).")
def plot_accuracy(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """Validation accuracy (perplexity for language models) per epoch, sparse phases shaded (Fig. 1 / 5a)."""
    lm = all(any("val_ppl" in m for m in r.metrics) for r in runs) and runs
    key = "val_ppl" if lm else "val_acc"
    if not any(_xy(r, key)[0] for r in runs):
        return None
    fig, (ax,) = _figure()
    shade_phases(ax, runs)
    for i, r in enumerate(runs):
        xs, ys = _xy(r, key)
        if not lm:
            ys = [100 * y for y in ys]
        ax.plot(xs, ys, "-o", ms=3.5, color=color(i), label=r.name)
        best = r.best_dense_epoch()
        if best is not None:
            bx = [x for x, m in zip(xs, r.metrics) if m["epoch"] == best]
            by = [y for y, m in zip(ys, r.metrics) if m["epoch"] == best]
            if bx:
                ax.plot(bx, by, "*", ms=12, color=color(i), mec="k", mew=0.6,
                        label="dense model (dense.safetensors)" if i == 0 else None)
    _epoch_axis(ax, runs)
    ax.set_ylabel("validation perplexity" if lm else "validation top-1 accuracy (%)")
    if lm:
        ax.set_yscale("log")
    ax.set_title("Validation " + ("perplexity" if lm else "accuracy") + " during training")
    ax.legend(fontsize=8, loc="lower right" if not lm else "upper right")
    return _save(fig, path)


@figure("mask_difference.png", "Mask dynamics",
        "Fraction of prunable weights whose kept/pruned status changed between consecutive compressions (paper "
        "Fig. 5b; normalised by all prunable weights, so two 90%-sparse masks differ by at most 20%).")
def plot_mask_difference(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """Mask difference between consecutive compressions (Fig. 5b): XOR of the kept sets / all prunable weights."""
    series = []
    for i, r in enumerate(runs):
        pts = [(float(c["epoch"]), float(c["mask_diff"])) for c in r.compressions() if c.get("mask_diff") is not None]
        if pts:
            series.append((i, r, pts))
    if not series:
        return None
    fig, (ax,) = _figure()
    shade_phases(ax, [r for _, r, _ in series])
    for i, r, pts in series:
        xs, ys = [p[0] for p in pts], [100 * p[1] for p in pts]
        ax.plot(xs, ys, "-o", ms=5, color=color(i), label=r.name)
        if len(pts) <= 12:
            for x, y in pts:
                ax.annotate(f"{100 * y:.3g}%", (x, 100 * y), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7, color=color(i))
    _epoch_axis(ax, [r for _, r, _ in series])
    ax.set_ylim(bottom=0)
    ax.set_ylabel("mask difference (% of prunable weights)")
    ax.set_title("Mask change vs. previous compression (x = epoch of the compression)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _phase_ends(run: RunData, phase: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    ms = run.metrics
    for j, m in enumerate(ms):
        last = j + 1 == len(ms) or epoch_phase(ms[j + 1]) != epoch_phase(m)
        if epoch_phase(m) == phase and last and "inference_flops_rel" in m:
            xs.append(float(m["epoch"]) + 1)
            ys.append(100 * float(m["inference_flops_rel"]))
    return xs, ys


@figure("inference_flops.png", "Inference FLOPs",
        "Inference FLOPs per sample relative to the dense model, per epoch and at the end of each sparse / dense "
        "phase (paper Fig. 6a/b).")
def plot_inference_flops(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """Inference FLOPs relative to dense: per epoch, at the end of each sparse phase (6a), of each dense phase (6b)."""
    runs_f = _runs_with(runs, "inference_flops_rel")
    if not runs_f:
        return None
    fig, axes = _figure(w=13, h=4.0, ncols=3)
    shade_phases(axes[0], [r for _, r in runs_f])
    for i, r in runs_f:
        xs, ys = _xy(r, "inference_flops_rel")
        ys = [100 * y for y in ys]  # constant within an epoch's phase: draw epoch e over [e, e + 1]
        axes[0].step([xs[0] - 1, *xs], [ys[0], *ys], where="pre", color=color(i), label=r.name)
        axes[0].plot(xs, ys, "o", ms=3, color=color(i))
        if len(phase_segments(r.metrics)) < 2:
            continue  # a single-phase (dense) run has no phase ends worth showing
        for ax, phase, mk in ((axes[1], "sparse", "o"), (axes[2], "dense", "s")):
            px, py = _phase_ends(r, phase)
            if px:
                ax.plot(px, py, "-" + mk, ms=5, color=color(i), label=r.name)
    titles = ("(per epoch)", "(a) end of each sparse phase", "(b) end of each dense phase")
    for ax, t in zip(axes, titles):
        _epoch_axis(ax, [r for _, r in runs_f])
        lo, hi = ax.get_ylim()
        if hi - lo < 2.0:  # near-constant FLOPs: show at least 2 percentage points, no offset notation
            mid = (lo + hi) / 2
            ax.set_ylim(mid - 1.0, mid + 1.0)
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        ax.set_title(t, fontsize=10)
        ax.set_ylabel("inference FLOPs per sample (% of dense)")
        ax.legend(fontsize=7)
    axes[0].set_ylim(0, 105)
    fig.suptitle("Inference FLOPs relative to the dense model (non-zero Conv/Linear weights)")
    return _save(fig, path)


@figure("training_flops.png", "Training FLOPs",
        "Cumulative training FLOPs as a fraction of a full dense run of the same length; the dashed diagonal is "
        "dense training.")
def plot_training_flops(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """Cumulative training FLOPs as a fraction of a full dense run's budget; dense training is the diagonal."""
    runs_f = _runs_with(runs, "train_flops_cum_rel")
    if not runs_f:
        return None
    fig, (ax,) = _figure()
    shade_phases(ax, [r for _, r in runs_f])
    for k, n in enumerate(sorted({r.planned_epochs() for _, r in runs_f})):
        ax.plot([0, n], [0, 100], "--", color="0.35", lw=1, label="dense baseline (diagonal)" if k == 0 else None)
    for i, r in runs_f:
        xs, ys = _xy(r, "train_flops_cum_rel")
        ax.plot([0.0, *xs], [0.0, *(100 * y for y in ys)], "-o", ms=3, color=color(i),
                label=f"{r.name} (total {100 * ys[-1]:.1f}%)")
    _epoch_axis(ax, [r for _, r in runs_f])
    ax.set_ylim(0, 105)
    ax.set_ylabel("cumulative training FLOPs (% of dense run)")
    ax.set_title("Training FLOPs (forward + backward, RigL convention)")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def _count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


@figure("layer_density.png", "Per-layer density",
        "Non-zero fraction of each prunable layer of the final sparse model (sparse.safetensors, else the last "
        "metrics line).")
def plot_layer_density(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """Per-layer density (non-zero fraction) of each run's final sparse model, grouped bars."""
    dens = [(i, r, r.final_layer_density()) for i, r in enumerate(runs)]
    dens = [(i, r, d) for i, r, d in dens if d]
    if not dens:
        return None
    layers: list[str] = []
    for _, _, d in dens:
        layers += [k for k in d if k not in layers]
    n = len(layers)
    fig, (ax,) = _figure(w=max(7.5, 0.45 * n * max(1, len(dens)) ** 0.5 + 2), h=4.6)
    width = 0.8 / len(dens)
    for j, (i, r, d) in enumerate(dens):
        xs = [k + (j - (len(dens) - 1) / 2) * width for k in range(n)]
        ys = [100 * d.get(name, float("nan")) for name in layers]
        overall = r.final_density()
        lab = r.name + (f" (overall {100 * overall:.1f}%)" if overall is not None else "")
        ax.bar(xs, ys, width=width, color=color(i), label=lab)
        if overall is not None:
            ax.axhline(100 * overall, color=color(i), ls="--", lw=1)
        if n * len(dens) <= 24:
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=6)
    sizes: dict[str, int] = {}
    for _, r, _ in dens:
        sizes.update({k: v for k, v in r.final_layer_sizes().items() if k not in sizes})
    short = [name.removesuffix(".weight") + (f"\n{_count(sizes[name])}" if name in sizes else "") for name in layers]
    ax.set_xticks(range(n))
    ax.set_xticklabels(short, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=7)
    ax.set_xlabel("prunable layer (number of weights)" if sizes else "prunable layer (weight tensor)")
    ax.set_ylabel("density of final sparse model (% non-zero)")
    ax.set_ylim(0, 105)
    ax.set_title("Per-layer density (dashed: overall density of the prunable weights)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


@figure("memorization.png", "Memorization",
        "Accuracy on the training samples with corrupted labels, w.r.t. their true labels (solid) and the "
        "corrupted labels (dashed) (paper Fig. 2b, 8, 9). The ~1/C of samples whose random label equals the true "
        "one count for both curves.")
def plot_memorization(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """Accuracy on the corrupted training samples w.r.t. their true and their corrupted labels (Fig. 2b, 8, 9)."""
    runs_m = _runs_with(runs, "mem_acc_true")
    if not runs_m:
        return None
    fig, (ax,) = _figure()
    shade_phases(ax, [r for _, r in runs_m])
    for i, r in runs_m:
        n = r.memorization_n()
        tag = f"{r.name} (n={n})" if n else r.name
        xs, ys = _xy(r, "mem_acc_true")
        ax.plot(xs, [100 * y for y in ys], "-o", ms=3.5, color=color(i), label=f"{tag}: vs. true label")
        xs, ys = _xy(r, "mem_acc_corrupted")
        ax.plot(xs, [100 * y for y in ys], "--^", ms=3.5, color=color(i), alpha=0.8,
                label=f"{tag}: vs. corrupted label (memorized)")
    _epoch_axis(ax, [r for _, r in runs_m])
    ax.set_ylim(-2, 102)
    ax.set_ylabel("accuracy on corrupted training samples (%)")
    ax.set_title("Memorization of corrupted labels")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, frameon=False)
    return _save(fig, path)
