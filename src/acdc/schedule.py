"""AC/DC phase schedules: which phase ("dense" or "sparse") is training time ``t`` (in epochs) in.

A schedule is a list of half-open phases ``[start, end)`` that tile ``[0, epochs)``. Time is measured in
(possibly fractional) epochs, so step-based training uses ``t = step / steps_per_epoch``.

The regular AC/DC layout (paper, section 3.2 and Figure 1)::

    dense warm-up | S D S D ... S D_final | S_final

``final_dense`` is the length of the last dense phase before the final sparse fine-tuning phase (it defaults
to ``dense``). The paper's ImageNet timeline D0-9, (S5,D5)x6, S70-74, D75-84, S85-99 is
``Schedule(epochs=100, warmup=10, sparse=5, dense=5, final_dense=10, final_sparse=15)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DENSE = "dense"
SPARSE = "sparse"
_KINDS = (DENSE, SPARSE)


@dataclass(frozen=True)
class Phase:
    """One phase of a schedule: ``kind`` in ``[start, end)`` epochs."""

    kind: str
    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start

    def __iter__(self):  # allows ``kind, start, end = phase``
        return iter((self.kind, self.start, self.end))


def _check_number(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Schedule: `{name}` must be a number of epochs, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        need = "> 0" if not allow_zero else ">= 0"
        raise ValueError(f"Schedule: `{name}` must be {need} epochs, got {value!r}")
    return v


class Schedule:
    """An AC/DC phase schedule.

    Build the regular layout with the constructor, an explicit one with :meth:`from_phases`, or use the paper's
    presets :meth:`paper_imagenet` / :meth:`paper_cifar` (stretch them with :meth:`scaled`).
    """

    def __init__(
        self,
        epochs: float,
        warmup: float,
        sparse: float,
        dense: float,
        final_sparse: float,
        final_dense: float | None = None,
        *,
        _phases: Sequence[Phase] | None = None,
    ) -> None:
        if _phases is not None:
            self._phases = tuple(_phases)
            self.epochs = self._phases[-1].end
            return
        epochs = _check_number("epochs", epochs, allow_zero=False)
        warmup = _check_number("warmup", warmup)
        sparse = _check_number("sparse", sparse, allow_zero=False)
        dense = _check_number("dense", dense, allow_zero=False)
        final_sparse = _check_number("final_sparse", final_sparse, allow_zero=False)
        final_dense = dense if final_dense is None else _check_number("final_dense", final_dense, allow_zero=False)
        # The alternation region holds n (S, D) pairs whose last D has length final_dense.
        region = epochs - warmup - final_sparse
        n = (region + dense - final_dense) / (sparse + dense)
        n_int = round(n)
        if n_int < 1 or not math.isclose(n, n_int, rel_tol=0, abs_tol=1e-9):
            lo = warmup + sparse + final_dense + final_sparse
            step = sparse + dense
            raise ValueError(
                "Schedule: phase lengths do not add up to `epochs`: warmup + n*(sparse+dense) - dense + final_dense"
                f" + final_sparse must equal epochs={epochs:g} for a whole n >= 1, but gives n={n:.3f}. "
                f"Fix: choose `epochs` among {lo:g}, {lo + step:g}, {lo + 2 * step:g}, ... "
                "or adjust warmup/sparse/dense/final_dense/final_sparse"
            )
        phases: list[Phase] = []
        t = 0.0
        if warmup > 0:
            phases.append(Phase(DENSE, 0.0, warmup))
            t = warmup
        for i in range(n_int):
            phases.append(Phase(SPARSE, t, t + sparse))
            t += sparse
            d = final_dense if i == n_int - 1 else dense
            phases.append(Phase(DENSE, t, t + d))
            t += d
        phases.append(Phase(SPARSE, t, t + final_sparse))
        self._phases = tuple(phases)
        self.epochs = epochs
        self._validate(self._phases)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_phases(cls, phases: Iterable[Sequence]) -> Schedule:
        """Explicit schedule from ``[(kind, start, end), ...]``; contiguous from 0, ending in a sparse phase."""
        out: list[Phase] = []
        for i, p in enumerate(phases):
            if isinstance(p, Phase):
                out.append(p)
                continue
            if isinstance(p, dict):
                p = (p.get("kind"), p.get("start"), p.get("end"))
            if len(p) != 3:
                raise ValueError(f"Schedule.from_phases: phase {i} must be (kind, start, end), got {p!r}")
            kind, start, end = p
            start = _check_number(f"phases[{i}].start", start)
            out.append(Phase(str(kind), start, _check_number(f"phases[{i}].end", end)))
        cls._validate(out)
        # merge adjacent phases of the same kind so ``timeline()`` is canonical
        merged: list[Phase] = []
        for p in out:
            if merged and merged[-1].kind == p.kind:
                merged[-1] = Phase(p.kind, merged[-1].start, p.end)
            else:
                merged.append(p)
        return cls(0, 0, 0, 0, 0, _phases=merged)

    @classmethod
    def paper_imagenet(cls, epochs: float = 100) -> Schedule:
        """The paper's ImageNet timeline: D0-9, (S5,D5)x6, S70-74, D75-84, S85-99 (stretched if epochs != 100)."""
        base = cls(epochs=100, warmup=10, sparse=5, dense=5, final_dense=10, final_sparse=15)
        return base if epochs == 100 else cls.scaled(base, epochs=epochs)

    @classmethod
    def paper_cifar(cls, epochs: float = 200) -> Schedule:
        """The paper's CIFAR-100 timeline: D0-9, (S20,D20)x4, S170-199 (stretched if epochs != 200)."""
        base = cls(epochs=200, warmup=10, sparse=20, dense=20, final_sparse=30)
        return base if epochs == 200 else cls.scaled(base, epochs=epochs)

    @classmethod
    def scaled(cls, preset: Schedule, epochs: float) -> Schedule:
        """Stretch every phase boundary of ``preset`` by ``epochs / preset.epochs`` (boundaries may be fractional)."""
        epochs = _check_number("epochs", epochs, allow_zero=False)
        f = epochs / preset.epochs
        phases = [Phase(p.kind, p.start * f, p.end * f) for p in preset.timeline()]
        phases[-1] = Phase(phases[-1].kind, phases[-1].start, epochs)  # exact end despite rounding
        return cls.from_phases(phases)

    @classmethod
    def from_config(cls, cfg: dict | str, epochs: float) -> Schedule:
        """Build from a recipe's ``schedule:`` value: a preset name, or a dict of constructor fields / phases."""
        if isinstance(cfg, str):
            presets = {"paper_imagenet": cls.paper_imagenet, "paper_cifar": cls.paper_cifar}
            if cfg not in presets:
                raise ValueError(f"schedule: unknown preset {cfg!r}; choose one of {sorted(presets)} or give a dict")
            return presets[cfg](epochs=epochs)
        if not isinstance(cfg, dict):
            raise ValueError(f"schedule: expected a preset name or a mapping, got {type(cfg).__name__}")
        cfg = dict(cfg)
        if "phases" in cfg:
            extra = set(cfg) - {"phases"}
            if extra:
                raise ValueError(f"schedule: `phases` cannot be combined with {sorted(extra)}")
            s = cls.from_phases(cfg["phases"])
        elif "preset" in cfg:
            name = cfg.pop("preset")
            extra = set(cfg)
            if extra:
                raise ValueError(f"schedule: `preset` cannot be combined with {sorted(extra)}")
            s = cls.from_config(name, epochs)
        else:
            allowed = {"warmup", "sparse", "dense", "final_dense", "final_sparse", "epochs"}
            unknown = set(cfg) - allowed
            if unknown:
                raise ValueError(f"schedule: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
            cfg.setdefault("epochs", epochs)
            missing = {"warmup", "sparse", "dense", "final_sparse"} - set(cfg)
            if missing:
                raise ValueError(f"schedule: missing key(s) {sorted(missing)}")
            s = cls(**cfg)
        if not math.isclose(s.epochs, epochs):
            raise ValueError(
                f"schedule: covers {s.epochs:g} epochs but training runs {epochs:g}; make them equal"
            )
        return s

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate(phases: Sequence[Phase]) -> None:
        if not phases:
            raise ValueError("Schedule: no phases given; give at least one sparse phase")
        t = 0.0
        for i, p in enumerate(phases):
            if p.kind not in _KINDS:
                raise ValueError(f"Schedule: phases[{i}].kind must be 'dense' or 'sparse', got {p.kind!r}")
            if p.start < 0 or p.end < 0:
                raise ValueError(f"Schedule: phases[{i}] has a negative boundary ({p.start}, {p.end})")
            if p.end <= p.start:
                raise ValueError(f"Schedule: phases[{i}] ({p.kind}, {p.start}, {p.end}) is empty or reversed; "
                                 "need end > start")
            if not math.isclose(p.start, t, rel_tol=0, abs_tol=1e-9):
                what = "overlaps the previous phase" if p.start < t else "leaves a gap after the previous phase"
                raise ValueError(f"Schedule: phases[{i}] starts at {p.start:g} and {what} (which ends at {t:g}); "
                                 "phases must be contiguous from epoch 0")
            t = p.end
        if phases[-1].kind != SPARSE:
            raise ValueError("Schedule: the last phase must be sparse (AC/DC ends on sparse fine-tuning); "
                             "append a final sparse phase")

    # ------------------------------------------------------------------ queries
    def timeline(self) -> list[Phase]:
        """The phases in order; each unpacks as ``(kind, start, end)``."""
        return list(self._phases)

    def phase_index(self, t: float) -> int:
        """Index in :meth:`timeline` of the phase containing epoch ``t`` (t >= epochs maps to the last phase)."""
        if t < 0:
            raise ValueError(f"Schedule.phase: time must be >= 0, got {t}")
        for i, p in enumerate(self._phases):
            if t < p.end:
                return i
        return len(self._phases) - 1

    def phase(self, t: float) -> str:
        """``"dense"`` or ``"sparse"`` for (fractional) epoch ``t``."""
        return self._phases[self.phase_index(t)].kind

    def sparse_epochs(self) -> float:
        return sum(p.length for p in self._phases if p.kind == SPARSE)

    def to_dict(self) -> dict:
        return {"phases": [[p.kind, p.start, p.end] for p in self._phases]}

    def describe(self) -> str:
        """Compact text like ``D0-9, S10-14, ...`` (inclusive whole epochs where boundaries are integers)."""
        parts = []
        for p in self._phases:
            tag = "D" if p.kind == DENSE else "S"
            if float(p.start).is_integer() and float(p.end).is_integer():
                parts.append(f"{tag}{int(p.start)}-{int(p.end) - 1}")
            else:
                parts.append(f"{tag}{p.start:g}-{p.end:g}")
        return ", ".join(parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self._phases == other._phases

    def __repr__(self) -> str:
        return f"Schedule({self.describe()})"
