"""Equal-budget comparison of sparse-training methods: every (method, sparsity, seed) on one recipe, one table.

Each run uses the recipe's model, data, optimizer, LR schedule and number of epochs; only the ``method:`` block
changes. Method options from the recipe's method block apply only to the method of the same name; every other
method uses its registry defaults, plus ``--method-opt METHOD.key=value``. Specifics:

- ``dense`` runs once per seed (not per sparsity); its run dir is ``dense-s0-seed<k>``.
- ``acdc`` keeps the recipe's ``schedule`` when the recipe's method is acdc, else uses ``paper_imagenet``
  stretched to the recipe's epochs (the registry default). Each finished AC/DC run is also fine-tuned densely
  from its dense model (``dense.safetensors``: a dense-phase epoch after the first compression, recipe keys
  ``dense_pick`` / ``dense_from``) to the end of the schedule (:func:`acdc.train.finetune.finetune_dense`).
- Like-for-like dense columns: ``last`` (no selection) and ``best on val`` for AC/DC and the dense baseline alike;
  accuracies are on the test split when the data has one (picks on validation), else on validation (the table
  notes then say that ``best on val`` was selected on the reported set).
- ``oneshot`` prunes the *final* model of the dense run of the same seed (trained first if needed) and
  fine-tunes it for ``oneshot_epochs`` epochs (default: 25% of the recipe's epochs, at least 1) on the tail of
  the recipe's LR schedule (the run starts at epoch ``epochs - oneshot_epochs``, no warm-up). Its training FLOPs
  and wall time include the dense pre-training.
- Seed ``k`` uses ``recipe.seed + k``.

Runs resume: a run dir with ``summary.json`` is skipped; one with ``last/`` continues (``Trainer(resume=True)``).
A run dir whose ``recipe.yaml`` differs from the recipe it would now get is an error (use another ``--out``).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .methods import Dense, available, method_class
from .report.rundata import read_summary
from .report.tables import EMPTY, fmt_num, fmt_pm, md_table
from .train.recipe import Recipe, RecipeError, apply_overrides, dump_recipe, load_raw_recipe, parse_recipe

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

DASH = EMPTY  # the empty cell of the tables (one dash style with `acdc report`)
CSV_COLUMNS = [
    "method", "target_sparsity", "seeds",
    "top1_mean", "top1_std", "sparsity_mean",
    "dense_last_top1_mean", "dense_last_top1_std", "dense_best_top1_mean", "dense_best_top1_std",
    "dense_ft_top1_mean", "dense_ft_top1_std",
    "inference_flops_rel", "train_flops_rel", "wall_time_s", "reported_on", "eval_samples",
]
ACC_KEYS = ("top1", "dense_last_top1", "dense_best_top1", "dense_ft_top1")


@dataclass
class RunSpec:
    """One training run of the comparison."""

    method: str
    sparsity: float  # 0 for dense
    seed_index: int
    recipe: Recipe
    start_epoch: int = 0  # > 0 for oneshot fine-tuning
    init_from: str | None = None  # run name whose final.safetensors initialises this run (oneshot)

    @property
    def name(self) -> str:
        return run_name(self.method, self.sparsity, self.seed_index)


@dataclass
class CompareResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def markdown(self) -> Path:
        return self.out_dir / "compare.md"

    @property
    def csv(self) -> Path:
        return self.out_dir / "compare.csv"


def run_name(method: str, sparsity: float, seed_index: int) -> str:
    return f"{method}-s{sparsity:g}-seed{seed_index}"


def parse_method_opts(items: Sequence[str] | None) -> dict[str, list[str]]:
    """``["rigl.update_every=50", ...]`` -> ``{"rigl": ["update_every=50"], ...}``."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        method, dot, opt = key.strip().partition(".")
        if not eq or not dot or not method or not opt:
            raise RecipeError(f"--method-opt expects METHOD.key=value, got {item!r}")
        out.setdefault(method, []).append(f"{opt}={value}")
    return out


def default_oneshot_epochs(epochs: int) -> int:
    return max(1, round(0.25 * epochs))


def _check_plan(methods: Sequence[str], sparsities: Sequence[float], seeds: int) -> None:
    known = set(available())
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {sorted(known)}")
    if not methods:
        raise ValueError("--methods is empty")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    for s in sparsities:
        if not 0 < s < 1:
            raise ValueError(f"--sparsity values must be in (0, 1), got {s}")


def _recipe_for(base: Recipe, method: str, sparsity: float, k: int, opts: Sequence[str]) -> Recipe:
    """One run's recipe: the base recipe with ``method`` (its options kept when it is the base's own method) at
    ``sparsity``, seed + ``k``, and the method's ``--method-opt`` overrides."""
    r = base.with_method(method, sparsity if method_class(method).yields_sparse else None, seed=base.seed + k,
                         name=f"{base.name}-{run_name(method, sparsity, k)}")
    return parse_recipe(apply_overrides(r.to_dict(), [f"method.{o}" for o in opts]))


def plan_runs(
    raw: dict[str, Any],
    methods: Sequence[str],
    sparsities: Sequence[float],
    seeds: int,
    *,
    method_opts: Sequence[str] | None = None,
    oneshot_epochs: int | None = None,
) -> list[RunSpec]:
    """Every run of the comparison, in execution order (seed-major; a seed's dense run comes first)."""
    _check_plan(methods, sparsities, seeds)
    opts = parse_method_opts(method_opts)
    stray = sorted(set(opts) - set(methods))
    if stray:
        raise ValueError(f"--method-opt names method(s) {stray} not in --methods")
    base = parse_recipe(raw)  # validate once, with a clear error
    epochs = base.epochs
    ft_epochs = default_oneshot_epochs(epochs) if oneshot_epochs is None else int(oneshot_epochs)
    if any(method_class(m).needs_dense_init for m in methods) and not 1 <= ft_epochs <= epochs:
        raise ValueError(f"--oneshot-epochs must be in [1, {epochs}], got {ft_epochs}")
    specs: list[RunSpec] = []
    need_dense = any(not method_class(m).yields_sparse or method_class(m).needs_dense_init for m in methods)
    for k in range(seeds):
        if need_dense:
            specs.append(RunSpec(Dense.name, 0.0, k, _recipe_for(base, Dense.name, 0.0, k, opts.get(Dense.name, []))))
        for s in sparsities:
            for m in methods:
                if not method_class(m).yields_sparse:
                    continue
                spec = RunSpec(m, float(s), k, _recipe_for(base, m, float(s), k, opts.get(m, [])))
                if method_class(m).needs_dense_init:
                    spec.start_epoch = epochs - ft_epochs
                    spec.init_from = run_name(Dense.name, 0.0, k)
                specs.append(spec)
    return specs


def _recipe_matches(run_dir: Path, recipe: Recipe) -> bool:
    p = run_dir / "recipe.yaml"
    if not p.is_file():
        return True
    return yaml.safe_load(p.read_text()) == yaml.safe_load(dump_recipe(recipe))


def run_status(run_dir: Path) -> str:
    """``done`` (summary.json), ``partial`` (a resumable ``last/``) or ``new``."""
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "last").exists():
        return "partial"
    return "new"


def _needs_finetune(spec: RunSpec, run_dir: Path) -> bool:
    if (run_dir / "summary.json").is_file() and not (run_dir / "dense.safetensors").is_file():
        return False  # a finished run without a dense model (no dense epoch after its first compression)
    return method_class(spec.method).has_dense_finetune and not (run_dir / "finetune_dense" / "summary.json").is_file()


def _check_recipes(specs: Sequence[RunSpec], runs: Path) -> None:
    for spec in specs:
        d = runs / spec.name
        if not _recipe_matches(d, spec.recipe):
            raise ValueError(f"{d} was trained with a different recipe than this comparison now gives it; "
                             "use another --out (or delete that run dir)")


def _train_run(spec: RunSpec, runs: Path, status: str, bar: Any) -> None:
    """Train (or resume) one run; a run that needs dense initial weights starts from its dense run's model."""
    from .train.loop import Trainer

    hooks = []
    if bar is not None:
        def hook(tr: Any, epoch: int, _bar: Any = bar, _n: str = spec.name) -> dict:
            _bar.set_description(f"{_n} epoch {epoch + 1}/{tr.recipe.epochs}")
            return {}
        hooks.append(hook)
    init = None
    if spec.init_from is not None and status == "new":
        init = runs / spec.init_from / "final.safetensors"
        if not init.is_file():
            raise FileNotFoundError(f"{spec.name} needs the dense model {init}; train dense first")
    Trainer(spec.recipe, runs / spec.name, resume=status == "partial", progress=False, init_weights=init,
            start_epoch=spec.start_epoch, epoch_hooks=hooks).run()


def execute(
    specs: Sequence[RunSpec],
    out_dir: Path,
    *,
    progress: bool = True,
    finetune: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[list[str], list[str]]:
    """Train every run not yet finished (and dense-fine-tune AC/DC runs); returns (ran, skipped) run names."""
    from .train.finetune import finetune_dense

    runs = out_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    _check_recipes(specs, runs)
    ran: list[str] = []
    skipped: list[str] = []
    bar = tqdm(total=len(specs), desc="compare", unit="run", dynamic_ncols=True) if progress and tqdm else None
    try:
        for spec in specs:
            d = runs / spec.name
            status = run_status(d)
            todo_ft = finetune and _needs_finetune(spec, d)
            if status == "done" and not todo_ft:
                skipped.append(spec.name)
            else:
                if bar is not None:
                    bar.set_description(f"{spec.name} ({status})")
                if status != "done":
                    _train_run(spec, runs, status, bar)
                if todo_ft and (d / "dense.safetensors").is_file():  # none without a dense epoch after compression
                    if bar is not None:
                        bar.set_description(f"{spec.name} dense fine-tune")
                    finetune_dense(d, progress=False)
                ran.append(spec.name)
                if log is not None:
                    log(f"finished {spec.name}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return ran, skipped


# ---------------------------------------------------------------------- aggregation
def run_record(spec: RunSpec, out_dir: Path) -> dict[str, Any]:
    """The numbers of one finished run (accuracies as fractions; ``None`` where not applicable).

    Accuracies are on the test split when the run has one (models picked on validation), else on validation.
    Dense models, the same two rules for every method that yields one: ``dense_last`` (AC/DC: the last epoch of
    its last dense phase after the first compression; dense baseline: its final model) and ``dense_best`` (the
    best of those candidates on validation).
    """
    d = out_dir / "runs" / spec.name
    s = read_summary(d)
    split = "test" if "test_acc" in s["final"] else "val"
    key = f"{split}_acc"

    def acc(block: Any) -> float | None:
        return block.get(key) if isinstance(block, dict) else None

    ev = s.get("eval") or {}
    rec: dict[str, Any] = {
        "top1": s["final"][key], "sparsity": s["final"]["sparsity"],
        "dense_last_top1": acc(s.get("dense_last")), "dense_best_top1": acc(s.get("dense_best")),
        "dense_ft_top1": None, "reported_on": split, "eval_samples": ev.get(f"{split}_samples"),
        "inference_flops_rel": s.get("inference_flops_rel"), "train_flops_rel": s.get("train_flops_rel"),
        "wall_time": s.get("wall_time"),
    }
    ft = read_summary(d / "finetune_dense", required=False)
    if ft:
        rec["dense_ft_top1"] = acc(ft["final"])
    if spec.init_from is not None:  # oneshot: add the dense pre-training it builds on
        ds = read_summary(out_dir / "runs" / spec.init_from)
        if rec["train_flops_rel"] is not None and ds.get("train_flops_rel") is not None:
            rec["train_flops_rel"] += ds["train_flops_rel"]
        rec["wall_time"] = (rec["wall_time"] or 0.0) + (ds.get("wall_time") or 0.0)
    return rec


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; undefined, so ``None``, for a single value); ``None, None`` if
    any value is missing."""
    if not values or any(v is None for v in values):
        return None, None
    vals = [float(v) for v in values]  # type: ignore[arg-type]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(specs: Sequence[RunSpec], out_dir: Path) -> list[dict[str, Any]]:
    """One row per (method, sparsity): means (and std for accuracies) over the seeds' finished runs."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for spec in specs:
        if (out_dir / "runs" / spec.name / "summary.json").is_file():
            groups.setdefault((spec.method, spec.sparsity), []).append(run_record(spec, out_dir))
    rows = []
    for (method, sparsity), recs in groups.items():
        row: dict[str, Any] = {"method": method, "target_sparsity": sparsity, "seeds": len(recs)}
        for key in ACC_KEYS:
            m, sd = _mean_std([r[key] for r in recs])
            row[f"{key}_mean"] = None if m is None else 100 * m
            row[f"{key}_std"] = None if sd is None else 100 * sd
        row["reported_on"] = "/".join(sorted({r["reported_on"] for r in recs}))
        sizes = {r["eval_samples"] for r in recs}
        row["eval_samples"] = sizes.pop() if len(sizes) == 1 else None
        for key, col in (("sparsity", "sparsity_mean"), ("inference_flops_rel", "inference_flops_rel"),
                         ("train_flops_rel", "train_flops_rel"), ("wall_time", "wall_time_s")):
            row[col] = _mean_std([r[key] for r in recs])[0]
        rows.append(row)
    order = {m: i for i, m in enumerate(dict.fromkeys(s.method for s in specs))}
    rows.sort(key=lambda r: (r["target_sparsity"] > 0, r["target_sparsity"], order[r["method"]]))
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV with :data:`CSV_COLUMNS`; accuracies in percent; empty cells where a method has no such value."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]))
                    for c in CSV_COLUMNS})
    return buf.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]], *, title: str, notes: Sequence[str] = ()) -> str:
    head = ["method", "target sparsity", "seeds", "top-1 % final model (mean ± std)", "achieved sparsity",
            "dense top-1 %: last", "dense top-1 %: best on val", "dense fine-tuned top-1 %",
            "inference FLOPs (rel.)", "training FLOPs (rel.)", "wall time (s)"]
    body = []
    for r in rows:
        cells = [r["method"], f"{r['target_sparsity']:g}", str(r["seeds"]),
                 fmt_pm(r["top1_mean"], r["top1_std"]), fmt_num(r["sparsity_mean"], 3),
                 fmt_pm(r["dense_last_top1_mean"], r["dense_last_top1_std"]),
                 fmt_pm(r["dense_best_top1_mean"], r["dense_best_top1_std"]),
                 fmt_pm(r["dense_ft_top1_mean"], r["dense_ft_top1_std"]),
                 fmt_num(r["inference_flops_rel"], 3), fmt_num(r["train_flops_rel"], 3), fmt_num(r["wall_time_s"], 1)]
        body.append(cells)
    lines = [f"# {title}", "", md_table(head, body), ""]
    lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


def split_note(rows: Sequence[dict[str, Any]]) -> str:
    """Which split the accuracies are on, and whether the best-on-val column was picked on that same split."""
    splits = {r["reported_on"] for r in rows}
    sizes = {r["eval_samples"] for r in rows} - {None}
    n = f" ({sizes.pop():,} samples)" if len(sizes) == 1 else ""
    if splits == {"test"}:
        return (f"All accuracies are on the test split{n}; `best on val` picks its epoch on the separate "
                "validation split, so no number here was selected on the set it reports.")
    if splits == {"val"}:
        return (f"All accuracies are on the validation split{n}, which is also where `best on val` picks its "
                "epoch: that column is selected on the reported set and is optimistic (the final-model and "
                "`last` columns involve no selection). Hold out a separate test split (mnist5k/digits: "
                "`--set data.val_fraction=0.1`) to pick on validation and report on test.")
    return ("Runs differ in the split they report (column `reported_on` of compare.csv): rows on `val` were "
            "selected on the reported set.")


def _notes(raw_recipe: Recipe, oneshot_ft: int | None, methods: Sequence[str]) -> list[str]:
    notes = [
        f"Recipe `{raw_recipe.name}`: {raw_recipe.epochs} epochs for every method, same model, data, optimizer and "
        "LR schedule; seed k uses recipe seed + k; mean ± sample std (ddof=1) over seeds.",
        "top-1 final model: the model at the end of training (the sparse model for sparse methods, the dense "
        "model for `dense`); no selection.",
        "Dense models, one rule per column for every method that yields one: `last` = AC/DC: the last epoch of "
        "its last dense phase; dense baseline: its final model (no selection). `best on val` = the epoch with "
        "the highest validation accuracy among the same candidates: AC/DC's dense-phase epochs after its first "
        f"compression (recipe key `dense_from: {raw_recipe.dense_from}`; the dense warm-up never counts by "
        "default), every epoch of the dense baseline.",
        "dense fine-tuned: AC/DC's dense model (`dense.safetensors`, recipe key "
        f"`dense_pick: {raw_recipe.dense_pick}`) trained densely to the end of the schedule (`acdc finetune-dense`, "
        f"not counted in training FLOPs or wall time); {DASH}: the method yields no such model.",
        "FLOPs relative to the dense model: inference of the final model; training averaged over all epochs "
        "(RigL per its paper's convention, Top-KAST as f_A + f_A + f_B).",
    ]
    if oneshot_ft is not None:
        names = ", ".join(m for m in methods if method_class(m).needs_dense_init)
        notes.append(f"{names}: the dense run's final model pruned once, fine-tuned {oneshot_ft} epoch(s) on the tail "
                     "of the LR schedule; its training FLOPs and wall time include the dense pre-training.")
    return notes


def write_tables(specs: Sequence[RunSpec], out_dir: Path, *, notes: Sequence[str] = (),
                 title: str = "Sparse-training comparison") -> list[dict[str, Any]]:
    rows = aggregate(specs, out_dir)
    (out_dir / "compare.csv").write_text(to_csv(rows))
    notes = [*notes, split_note(rows)] if rows else list(notes)
    (out_dir / "compare.md").write_text(to_markdown(rows, title=title, notes=notes))
    return rows




def compare(
    recipe: str | Path | dict[str, Any],
    methods: Sequence[str],
    sparsities: Sequence[float],
    seeds: int,
    out_dir: str | Path,
    *,
    overrides: Sequence[str] | None = None,
    method_opts: Sequence[str] | None = None,
    oneshot_epochs: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> CompareResult:
    """Train (or resume / skip) every (method, sparsity, seed) and write ``compare.md`` and ``compare.csv``.

    ``recipe`` is a YAML path or a raw recipe mapping; ``overrides`` are ``--set key=value`` strings applied to it.
    """
    raw = load_raw_recipe(recipe, overrides) if not isinstance(recipe, dict) \
        else apply_overrides(recipe, list(overrides or []))
    specs = plan_runs(raw, methods, sparsities, seeds, method_opts=method_opts, oneshot_epochs=oneshot_epochs)
    out = Path(out_dir)
    ran, skipped = execute(specs, out, progress=progress, log=log)
    base = parse_recipe(raw)
    ft = next((base.epochs - s.start_epoch for s in specs if method_class(s.method).needs_dense_init), None)
    rows = write_tables(specs, out, notes=_notes(base, ft, methods),
                        title=f"{base.name}: " + ", ".join(dict.fromkeys(s.method for s in specs)))
    return CompareResult(out, rows, ran, skipped)
