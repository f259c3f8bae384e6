"""Which positions of the prunable weights are kept: structure × distribution × score.

- **structure**: ``unstructured`` (any position) or ``N:M`` (at most N kept in each group of M consecutive input
  channels; sparsity 1 - N/M, whatever is requested).
- **distribution** (unstructured only): how the sparsity is spread over layers.

  - ``global``: one top-k over all layers jointly.
  - ``uniform``: every layer at the target sparsity (optional per-layer overrides).
  - ``erk`` (Erdős–Rényi-Kernel, Evci et al. 2020): layer density ∝ (sum of the weight's dimensions) / (its number
    of elements), i.e. (n_in + n_out + kh + kw)/(n_in·n_out·kh·kw) for a conv and (n_in + n_out)/(n_in·n_out) for a
    Linear, raised to ``erk_power_scale``; scaled so the total number of kept weights meets the target. Layers
    whose density would exceed 1 are made dense and the rest is redistributed, exactly like the RigL reference
    implementation (``sparse_utils.get_sparsities``).
- **score**: ``|w|`` by default, or given scores (RigL grows by |dense gradient|, SET at random); only positions in
  an optional ``allowed`` set are chosen (GMP's masks only shrink).

:class:`Target` names one choice (a frozen value: what it computes for a model is returned, never stored);
:func:`resolve_target` turns the shared method options (``structure``, ``distribution``, ``erk_power_scale``, and
the deprecated ``target``) into one. Per-layer counts follow :func:`acdc.masks.pruned_count`: a layer of ``n``
weights at sparsity ``s`` prunes ``round(s * n)`` and keeps :func:`acdc.masks.keep_count` (re-exported here).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from . import masks as _masks
from .masks import check_sparsity, global_magnitude, keep_count, topk_mask

__all__ = ["DISTRIBUTIONS", "Target", "resolve_target", "structure_of", "parse_structure", "check_distribution",
           "layer_sparsities",
           "uniform", "erk", "global_", "keep_count", "topk_within", "select_counts", "random_masks"]

DISTRIBUTIONS = ("global", "uniform", "erk")
UNSTRUCTURED = "unstructured"
_NM_RE = re.compile(r"^(\d+):(\d+)$")


# ---------------------------------------------------------------------- vocabulary
def parse_structure(value: object, key: str = "structure") -> str:
    """``"unstructured"`` or a normalised ``"N:M"`` (0 < N < M); anything else: ``ValueError`` naming ``key``."""
    s = value.strip().lower() if isinstance(value, str) else None
    if s == UNSTRUCTURED:
        return s
    m = _NM_RE.match(s) if s is not None else None
    if m and 0 < int(m.group(1)) < int(m.group(2)):
        return f"{int(m.group(1))}:{int(m.group(2))}"
    raise ValueError(f"`{key}` must be 'unstructured' or 'N:M' with 0 < N < M (quote it in YAML: \"2:4\"), "
                     f"got {value!r}")


def check_distribution(value: object, key: str = "distribution") -> str:
    """One of :data:`DISTRIBUTIONS` (case and spaces ignored); anything else: ``ValueError`` naming ``key``."""
    s = value.strip().lower() if isinstance(value, str) else None
    if s not in DISTRIBUTIONS:
        raise ValueError(f"`{key}` must be one of {', '.join(DISTRIBUTIONS)}, got {value!r}")
    return s


# ---------------------------------------------------------------------- layer sparsities
def uniform(params: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, float]:
    """Every layer at ``sparsity``."""
    s = check_sparsity(sparsity)
    return {n: s for n in params}


def erk(params: Mapping[str, torch.Tensor], sparsity: float, power_scale: float = 1.0) -> dict[str, float]:
    """ERK layer sparsities meeting ``sparsity`` overall (densities capped at 1, excess redistributed)."""
    s = check_sparsity(sparsity)
    if not params:
        raise ValueError("erk: no parameters given")
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    numel = {n: p.numel() for n, p in params.items()}
    raw = {n: (sum(sh) / numel[n]) ** power_scale for n, sh in shapes.items()}
    dense: set[str] = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        for n in params:
            if n in dense:
                rhs -= numel[n] * s  # a dense layer's would-be zeros must be found elsewhere
            else:
                rhs += numel[n] * (1.0 - s)
                divisor += raw[n] * numel[n]
        if divisor == 0:
            raise ValueError(f"erk: cannot reach sparsity {s} with every layer dense")
        eps = rhs / divisor
        max_raw = max(raw[n] for n in params if n not in dense)
        if max_raw * eps <= 1.0:
            break
        dense.update(n for n in params if n not in dense and raw[n] == max_raw)
    return {n: 0.0 if n in dense else 1.0 - eps * raw[n] for n in params}


def global_(params: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, float]:
    """Per-layer sparsities of a global magnitude top-k of the current weights."""
    m = global_magnitude({n: p.detach() for n, p in params.items()}, sparsity)
    return {n: 1.0 - float(m[n].sum()) / m[n].numel() for n in params}


def layer_sparsities(kind: str, params: Mapping[str, torch.Tensor], sparsity: float,
                     erk_power_scale: float = 1.0) -> dict[str, float]:
    """Per-layer sparsities of distribution ``kind`` (one of :data:`DISTRIBUTIONS`)."""
    kind = check_distribution(kind)
    if kind == "erk":
        return erk(params, sparsity, erk_power_scale)
    if kind == "uniform":
        return uniform(params, sparsity)
    return global_(params, sparsity)


# ---------------------------------------------------------------------- top-k of a score
def topk_within(scores: Mapping[str, torch.Tensor], allowed: Mapping[str, torch.Tensor] | None,
                keep: int) -> dict[str, torch.Tensor]:
    """Keep the ``keep`` largest |scores| jointly over the tensors, choosing only ``allowed`` positions.

    Ties keep the lowest global index first (as :func:`acdc.masks.topk_mask`). Exact: when the threshold falls on
    zero-score entries, allowed zeros are preferred to disallowed ones.
    """
    if allowed is None:
        return topk_mask(scores, keep)
    n_allowed = sum(int(a.sum()) for a in allowed.values())
    if not 0 <= keep <= n_allowed:
        raise ValueError(f"cannot keep {keep} of {n_allowed} allowed positions")
    masked = {n: torch.where(allowed[n], s.detach(), torch.zeros((), dtype=s.dtype, device=s.device))
              for n, s in scores.items()}
    out = topk_mask(masked, keep)
    if all(not bool((m & ~allowed[n]).any()) for n, m in out.items()):
        return out
    # the threshold is 0: swap disallowed zeros for allowed zeros, lowest global index first
    out = {n: m & allowed[n] for n, m in out.items()}
    deficit = keep - sum(int(m.sum()) for m in out.values())
    for n, m in out.items():
        if deficit <= 0:
            break
        free = torch.nonzero((allowed[n] & ~m).reshape(-1)).reshape(-1)[:deficit]
        m.view(-1)[free] = True
        deficit -= free.numel()
    return out


def select_counts(scores: Mapping[str, torch.Tensor], keep: Mapping[str, int],
                  allowed: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per layer: the ``keep[name]`` largest |scores| among its ``allowed`` positions (all when None)."""
    return {n: topk_within({n: s}, None if allowed is None else {n: allowed[n]}, keep[n])[n]
            for n, s in scores.items()}


def random_masks(params: Mapping[str, torch.Tensor], sparsities: Mapping[str, float],
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Uniformly random masks keeping exactly ``keep_count(n, s)`` weights per layer (seeded CPU generator)."""
    out = {}
    for n, p in params.items():
        k = keep_count(p.numel(), sparsities[n])
        idx = torch.randperm(p.numel(), generator=generator)[:k]
        m = torch.zeros(p.numel(), dtype=torch.bool)
        m[idx] = True
        out[n] = m.view(p.shape).to(p.device)
    return out


# ---------------------------------------------------------------------- Target
@dataclass(frozen=True, init=False)
class Target:
    """One choice of kept positions: ``structure`` × ``distribution`` (× ``erk_power_scale``, per-layer
    ``layer_sparsity`` overrides for ``uniform``). A value: nothing is stored per model; what :meth:`prepare`
    finds (N:M layers left dense) is returned. ``Target(kind="uniform")`` (the older spelling) still works."""

    structure: str
    distribution: str
    erk_power_scale: float
    layer_sparsity: Mapping[str, float] | None

    def __init__(self, structure: str = UNSTRUCTURED, distribution: str = "global", erk_power_scale: float = 1.0,
                 layer_sparsity: Mapping[str, float] | None = None, *, kind: str | None = None) -> None:
        if kind is not None:  # Target(kind="global" | "uniform" | "erk")
            distribution = kind
        set_ = object.__setattr__
        set_(self, "structure", parse_structure(structure))
        set_(self, "distribution", check_distribution(distribution))
        set_(self, "erk_power_scale", float(erk_power_scale))
        set_(self, "layer_sparsity", None if layer_sparsity is None else dict(layer_sparsity))

    @classmethod
    def parse(cls, spec: str | Target) -> Target:
        """The deprecated one-word ``target``: ``global`` / ``uniform`` (distributions) or ``N:M`` (structure)."""
        if isinstance(spec, Target):
            return spec
        s = spec.strip().lower() if isinstance(spec, str) else None
        if s in ("global", "uniform"):
            return cls(distribution=s)
        try:
            return cls(structure=parse_structure(s, "target"))
        except ValueError:
            raise ValueError(f"target must be 'global', 'uniform' or 'N:M' like '2:4', got {spec!r}") from None

    # ------------------------------------------------------------------ names
    @property
    def is_nm(self) -> bool:
        return self.structure != UNSTRUCTURED

    @property
    def n(self) -> int:
        return int(self.structure.split(":")[0]) if self.is_nm else 0

    @property
    def m(self) -> int:
        return int(self.structure.split(":")[1]) if self.is_nm else 0

    @property
    def kind(self) -> str:
        """``"nm"`` for N:M, else the distribution (the older one-word name)."""
        return "nm" if self.is_nm else self.distribution

    def nominal_sparsity(self, sparsity: float) -> float:
        return 1.0 - self.n / self.m if self.is_nm else sparsity

    # ------------------------------------------------------------------ per model
    def skipped_layers(self, params: Mapping[str, torch.Tensor]) -> list[str]:
        """N:M: the layers whose input channels are not a multiple of M (they stay dense); else none."""
        if not self.is_nm:
            return []
        return [n for n, p in params.items() if p.dim() < 2 or p.shape[1] % self.m]

    def prepare(self, params: Mapping[str, torch.Tensor]) -> list[str]:
        """:meth:`skipped_layers`, with a warning when there are some; an error when that is every layer."""
        skipped = self.skipped_layers(params)
        if skipped and len(skipped) == len(params):
            raise ValueError(
                f"N:M {self.n}:{self.m} skips every prunable layer (no input-channel count is a multiple of "
                f"{self.m}: {skipped}), so the model would never be sparse; use distribution 'global' or 'uniform' "
                f"(structure 'unstructured'), or an M that divides the layers' input channels"
            )
        if skipped:
            warnings.warn(
                f"N:M {self.n}:{self.m}: skipping {len(skipped)} layer(s) whose input channels are not a multiple "
                f"of {self.m} (they stay dense): {skipped}",
                stacklevel=3,
            )
        return skipped

    def layer_sparsities(self, params: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, float]:
        """Per-layer sparsities of this target at ``sparsity`` (N:M: 1 - N/M, 0 for the layers it skips)."""
        if self.is_nm:
            skipped = set(self.skipped_layers(params))
            return {n: 0.0 if n in skipped else self.nominal_sparsity(sparsity) for n in params}
        if self.distribution == "uniform" and self.layer_sparsity:
            check_sparsity(sparsity)
            return {n: self.layer_sparsity.get(n, sparsity) for n in params}
        return layer_sparsities(self.distribution, params, sparsity, self.erk_power_scale)

    def compute(self, weights: Mapping[str, torch.Tensor], sparsity: float, *,
                scores: Mapping[str, torch.Tensor] | None = None,
                allowed: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Masks (True = kept) for ``weights`` at ``sparsity`` (ignored by N:M, whose sparsity is 1 - N/M), ranking
        ``scores`` (default: the weights' magnitudes) and choosing only ``allowed`` positions (default: all).
        FSDP2 (DTensor) weights get sharded masks from the exact sharded selection (acdc.distributed.shards)."""
        from .distributed.shards import any_dtensor

        if any_dtensor(weights) is not None:
            return self._compute_sharded(weights, sparsity, scores, allowed)
        scores = weights if scores is None else scores
        if self.is_nm:
            return self._compute_nm(weights, scores, allowed)
        s = check_sparsity(sparsity)
        if self.distribution == "global":
            if allowed is None:
                return global_magnitude(scores, s)
            return topk_within(scores, allowed, keep_count(sum(w.numel() for w in weights.values()), s))
        per = self.layer_sparsities(weights, s)
        if allowed is None:
            return _masks.uniform_magnitude(scores, per)
        return select_counts(scores, {n: keep_count(w.numel(), per[n]) for n, w in weights.items()}, allowed)

    def _compute_sharded(self, weights: Mapping[str, torch.Tensor], sparsity: float,
                         scores: Mapping[str, torch.Tensor] | None,
                         allowed: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        from .distributed.shards import magnitude_within, sharded_target_masks

        if scores is not None or (allowed is not None and self.is_nm):
            raise ValueError("the sharded (FSDP) selection ranks |w| (optionally among allowed positions); given "
                             "scores are not supported there")
        if allowed is not None:  # GMP: |w| among the kept positions, as topk_within / select_counts choose
            weights = magnitude_within(weights, allowed)
        kind, per = self.kind, self.layer_sparsity
        if kind == "erk":  # ERK's layer sparsities depend on the (global) shapes only: a per-layer selection
            kind, per = "uniform", self.layer_sparsities(weights, sparsity)
        return sharded_target_masks(kind, weights, sparsity, per, self.n, self.m, self.skipped_layers(weights))

    def _compute_nm(self, weights: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                    allowed: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if allowed is not None:
            raise ValueError(f"N:M {self.structure}: a selection among allowed positions is not defined")
        skipped = set(self.skipped_layers(weights))
        return {n: torch.ones(w.shape, dtype=torch.bool, device=w.device) if n in skipped
                else _masks.n_m(scores[n], self.n, self.m) for n, w in weights.items()}


# ---------------------------------------------------------------------- method options -> Target
def structure_of(options: Mapping[str, object]) -> str:
    """The structure a method block names (``structure``, else the deprecated ``target``), without warnings: for
    reading a finished run's recipe (export), where the run is what it is."""
    if options.get("structure") is not None:
        return parse_structure(options["structure"])
    target = options.get("target")
    return Target.parse(target).structure if target is not None else UNSTRUCTURED


def _replacement(spec: object) -> str:
    """The new keys for a deprecated ``target`` value, as a user would write them."""
    s = str(spec).strip().lower()
    return f'structure: "{s}"' if ":" in s else f"distribution: {s}"


def resolve_target(*, structure: str | None = None, distribution: str | None = None,
                   erk_power_scale: float | None = None, target: str | Target | None = None,
                   default_distribution: str = "global", prefix: str = "") -> Target:
    """The :class:`Target` of a method's shared options (``None`` = not given).

    ``target`` (a string) is the deprecated alias: ``global``/``uniform`` -> ``distribution``, ``N:M`` ->
    ``structure`` (a ``DeprecationWarning`` names the new keys); a :class:`Target` object is taken as is. Giving it
    together with the new keys, a ``distribution`` with an N:M structure, or ``erk_power_scale`` without
    ``distribution: erk`` is a ``ValueError`` naming the key (``prefix`` + key, e.g. ``method.distribution``).
    """
    given = [k for k, v in (("structure", structure), ("distribution", distribution),
                            ("erk_power_scale", erk_power_scale)) if v is not None]
    if target is not None:
        if given:
            raise ValueError(f"`{prefix}target` is the deprecated spelling of `{prefix}structure`/"
                             f"`{prefix}distribution`; give only the new keys ({', '.join(given)})")
        if isinstance(target, Target):
            return target
        t = Target.parse(target)
        warnings.warn(f"`{prefix}target: {target}` is deprecated; write `{prefix}{_replacement(target)}` (keys "
                      "`structure`: unstructured | N:M, `distribution`: global | uniform | erk)",
                      DeprecationWarning, stacklevel=_outside_acdc())
        return t
    st = parse_structure(structure, prefix + "structure") if structure is not None else UNSTRUCTURED
    dist = check_distribution(distribution, prefix + "distribution") if distribution is not None else None
    if dist is not None and st != UNSTRUCTURED:
        raise ValueError(f"`{prefix}distribution` does not apply to `{prefix}structure: {st}` (every layer keeps "
                         f"N of each M); remove `{prefix}distribution`")
    if erk_power_scale is not None and (dist or default_distribution) != "erk":
        raise ValueError(f"`{prefix}erk_power_scale` applies to `{prefix}distribution: erk` only; remove it or set "
                         "the distribution to erk")
    return Target(structure=st, distribution=dist or default_distribution,
                  erk_power_scale=1.0 if erk_power_scale is None else _power(erk_power_scale, prefix))


def _outside_acdc() -> int:
    """``stacklevel`` (for a warning raised by our caller) of the first frame outside the ``acdc`` package, so a
    script calling ``ACDC(..., target=...)`` sees the deprecation as its own (shown by Python's default filters)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] == "acdc":
        frame, level = frame.f_back, level + 1
    return level


def _power(value: object, prefix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"`{prefix}erk_power_scale` must be a number >= 0 (1.0: ERK as published), got {value!r}")
    return float(value)
