"""AC/DC phase schedules: which phase ("dense" or "sparse") is training time ``t`` (in epochs) in.

A schedule is a list of half-open phases ``[start, end)`` that tile ``[0, epochs)``. Time is measured in
(possibly fractional) epochs, so step-based training uses ``t = step / steps_per_epoch``.

Boundaries are exact rationals (:class:`fractions.Fraction`): a float given by the user is read as the nearest
fraction with denominator <= 10**6 (``0.1`` is 1/10, ``1/3`` is 1/3), stretching multiplies exactly, and
:meth:`Schedule.phase_index` compares exactly, so the phase changes on the boundary itself — ``ACDC`` passes the
time as ``Fraction(step, steps_per_epoch)``. ``Phase`` objects show the boundaries as floats.

The regular AC/DC layout (paper, section 3.2 and Figure 1)::

    dense warm-up | S D S D ... S D_final | S_final

``final_dense`` is the length of the last dense phase before the final sparse fine-tuning phase (it defaults
to ``dense``). The paper's ImageNet timeline D0-9, (S5,D5)x6, S70-74, D75-84, S85-99 is
``Schedule(epochs=100, warmup=10, sparse=5, dense=5, final_dense=10, final_sparse=15)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

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


_MAX_DENOMINATOR = 10**6


def exact(value: float | int | Fraction) -> Fraction:
    """``value`` as an exact fraction: ints and Fractions as they are; a float as the nearest fraction with
    denominator <= 10**6 when that is within 1e-9 (relative) of it (the decimal the user meant), else exactly."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, numbers.Integral):
        return Fraction(int(value))
    f = Fraction(float(value))
    near = f.limit_denominator(_MAX_DENOMINATOR)
    return near if abs(near - f) <= 1e-9 * max(1, abs(f)) else f


def _check_number(name: str, value: object, *, allow_zero: bool = True) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Schedule: `{name}` must be a number of epochs, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        need = "> 0" if not allow_zero else ">= 0"
        raise ValueError(f"Schedule: `{name}` must be {need} epochs, got {value!r}")
    return exact(value)


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
        _phases: Sequence[tuple[str, Fraction, Fraction]] | None = None,
    ) -> None:
        if _phases is not None:
            self._set(_phases)
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
        if n < 1 or n.denominator != 1:
            lo = warmup + sparse + final_dense + final_sparse
            step = sparse + dense
            raise ValueError(
                "Schedule: phase lengths do not add up to `epochs`: warmup + n*(sparse+dense) - dense + final_dense"
                f" + final_sparse must equal epochs={float(epochs):g} for a whole n >= 1, but gives n={float(n):.3f}. "
                f"Fix: choose `epochs` among {float(lo):g}, {float(lo + step):g}, {float(lo + 2 * step):g}, ... "
                "or adjust warmup/sparse/dense/final_dense/final_sparse"
            )
        n_int = int(n)
        phases: list[tuple[str, Fraction, Fraction]] = []
        t = Fraction(0)
        if warmup > 0:
            phases.append((DENSE, t, warmup))
            t = warmup
        for i in range(n_int):
            phases.append((SPARSE, t, t + sparse))
            t += sparse
            d = final_dense if i == n_int - 1 else dense
            phases.append((DENSE, t, t + d))
            t += d
        phases.append((SPARSE, t, t + final_sparse))
        self._validate(phases)
        self._set(phases)

    def _set(self, phases: Sequence[tuple[str, Fraction, Fraction]]) -> None:
        """Store exact boundaries and their float view."""
        self._bounds = tuple((k, exact(a), exact(b)) for k, a, b in phases)
        self._phases = tuple(Phase(k, float(a), float(b)) for k, a, b in self._bounds)
        self.epochs = float(self._bounds[-1][2])

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_phases(cls, phases: Iterable[Sequence]) -> Schedule:
        """Explicit schedule from ``[(kind, start, end), ...]``; contiguous from 0, ending in a sparse phase."""
        out: list[tuple[str, Fraction, Fraction]] = []
        for i, p in enumerate(phases):
            if isinstance(p, dict):
                p = (p.get("kind"), p.get("start"), p.get("end"))
            elif isinstance(p, Phase):
                p = tuple(p)
            if len(p) != 3:
                raise ValueError(f"Schedule.from_phases: phase {i} must be (kind, start, end), got {p!r}")
            kind, start, end = p
            out.append((str(kind), _check_number(f"phases[{i}].start", start),
                        _check_number(f"phases[{i}].end", end)))
        cls._validate(out)
        # merge adjacent phases of the same kind so ``timeline()`` is canonical
        merged: list[tuple[str, Fraction, Fraction]] = []
        for k, a, b in out:
            if merged and merged[-1][0] == k:
                merged[-1] = (k, merged[-1][1], b)
            else:
                merged.append((k, a, b))
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
        f = epochs / preset._bounds[-1][2]
        return cls(0, 0, 0, 0, 0, _phases=[(k, a * f, b * f) for k, a, b in preset._bounds])

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
    def _validate(phases: Sequence[tuple[str, Fraction, Fraction]]) -> None:
        if not phases:
            raise ValueError("Schedule: no phases given; give at least one sparse phase")
        t = Fraction(0)
        for i, (kind, start, end) in enumerate(phases):
            if kind not in _KINDS:
                raise ValueError(f"Schedule: phases[{i}].kind must be 'dense' or 'sparse', got {kind!r}")
            if start < 0 or end < 0:
                raise ValueError(f"Schedule: phases[{i}] has a negative boundary ({float(start)}, {float(end)})")
            if end <= start:
                raise ValueError(f"Schedule: phases[{i}] ({kind}, {float(start)}, {float(end)}) is empty or "
                                 "reversed; need end > start")
            if start != t:
                what = "overlaps the previous phase" if start < t else "leaves a gap after the previous phase"
                raise ValueError(f"Schedule: phases[{i}] starts at {float(start):g} and {what} (which ends at "
                                 f"{float(t):g}); phases must be contiguous from epoch 0")
            t = end
        if phases[-1][0] != SPARSE:
            raise ValueError("Schedule: the last phase must be sparse (AC/DC ends on sparse fine-tuning); "
                             "append a final sparse phase")

    # ------------------------------------------------------------------ queries
    def timeline(self) -> list[Phase]:
        """The phases in order; each unpacks as ``(kind, start, end)``."""
        return list(self._phases)

    def phase_index(self, t: float | Fraction) -> int:
        """Index in :meth:`timeline` of the phase containing epoch ``t`` (t >= epochs maps to the last phase).

        Exact: a float ``t`` is read like a boundary (``0.3`` is 3/10, ``step / steps_per_epoch`` is that ratio
        for steps_per_epoch <= 10**6); pass a ``Fraction`` to compare an exact value.
        """
        if t < 0:
            raise ValueError(f"Schedule.phase: time must be >= 0, got {t}")
        tf = exact(t)
        for i, (_, _, end) in enumerate(self._bounds):
            if tf < end:
                return i
        return len(self._bounds) - 1

    def phase(self, t: float) -> str:
        """``"dense"`` or ``"sparse"`` for (fractional) epoch ``t``."""
        return self._phases[self.phase_index(t)].kind

    def sparse_epochs(self) -> float:
        return float(sum(b - a for k, a, b in self._bounds if k == SPARSE))

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
        return isinstance(other, Schedule) and self._bounds == other._bounds

    def __repr__(self) -> str:
        return f"Schedule({self.describe()})"
