"""Which parameters are prunable, and how a sparsity target turns weights into masks.

Default prunable set: the ``weight`` of every Conv1d/2d/3d and Linear module, first and last layer included (the
paper's headline setting); never biases or normalization parameters. A tied weight (one tensor used by several
modules, e.g. an LM's embedding and output head) is one prunable parameter under its first name; patterns match any
of its names. ``include`` / ``exclude`` are glob patterns
(``fnmatch``) on parameter names; ``include`` replaces the default set, ``exclude`` removes from it. A pattern that
matches nothing is an error, so typos cannot silently leave a layer dense.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from . import masks as _masks

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _as_list(patterns: str | Iterable[str] | None) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def parameter_aliases(model: nn.Module) -> dict[str, list[str]]:
    """First name -> every name of each parameter (tied weights have several, e.g. an LM's embedding and head)."""
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    return {names[0]: names for names in by_id.values()}


def _show(names: list[str], aliases: Mapping[str, list[str]]) -> str:
    """Names for an error message, tied ones with their other names: ``['a.weight (also b.weight)', ...]``."""
    shown = [n + (f" (also {', '.join(aliases[n][1:])})" if len(aliases.get(n, ())) > 1 else "") for n in names[:6]]
    return f"{shown}{' ...' if len(names) > 6 else ''}"


def prunable_parameters(
    model: nn.Module,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
) -> dict[str, nn.Parameter]:
    """Name -> parameter of the weights to sparsify.

    A shared (tied) parameter appears once, under its first name; ``include``/``exclude`` patterns match any of
    its names, and messages show the others.
    """
    named = dict(model.named_parameters())  # deduplicated: tied weights appear once
    aliases = parameter_aliases(model)
    names = list(named)
    include_l, exclude_l = _as_list(include), _as_list(exclude)

    def matches(n: str, pat: str) -> bool:
        return any(fnmatch.fnmatchcase(a, pat) for a in aliases.get(n, [n]))

    if include_l:
        selected: set[str] = set()
        for pat in include_l:
            hits = [n for n in names if matches(n, pat)]
            if not hits:
                raise ValueError(
                    f"include pattern {pat!r} matches no parameter; parameter names look like "
                    f"{_show(names, aliases)} (use glob syntax, e.g. 'layer1.*.weight')"
                )
            selected.update(hits)
        chosen = [n for n in names if n in selected]  # model order, each once
    else:
        default_ids = {id(mod.weight) for mod in model.modules()
                       if isinstance(mod, PRUNABLE_TYPES) and isinstance(getattr(mod, "weight", None), nn.Parameter)}
        chosen = [n for n, p in named.items() if id(p) in default_ids]
    for pat in exclude_l:
        hits = [n for n in chosen if matches(n, pat)]
        if not hits:
            raise ValueError(
                f"exclude pattern {pat!r} matches no prunable parameter; prunable names are "
                f"{_show(chosen, aliases)}"
            )
        chosen = [n for n in chosen if n not in hits]
    if not chosen:
        raise ValueError("no prunable parameters: the model has no Conv/Linear weights left after include/exclude")
    return {n: named[n] for n in chosen}


_NM_RE = re.compile(r"^(\d+):(\d+)$")


@dataclass
class Target:
    """How to turn weights into masks at a given sparsity: ``global``, ``uniform`` or ``N:M`` (e.g. ``2:4``)."""

    kind: str = "global"
    n: int = 0
    m: int = 0
    layer_sparsity: Mapping[str, float] | None = None  # optional per-layer overrides for `uniform`
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, spec: str | Target) -> Target:
        if isinstance(spec, Target):
            return spec
        if not isinstance(spec, str):
            raise ValueError(f"target must be 'global', 'uniform' or 'N:M' like '2:4', got {spec!r}")
        s = spec.strip().lower()
        if s in ("global", "uniform"):
            return cls(kind=s)
        m = _NM_RE.match(s)
        if m:
            n, mm = int(m.group(1)), int(m.group(2))
            if not 0 < n < mm:
                raise ValueError(f"target {spec!r}: N:M needs 0 < N < M (e.g. '2:4')")
            return cls(kind="nm", n=n, m=mm)
        raise ValueError(f"target must be 'global', 'uniform' or 'N:M' like '2:4', got {spec!r}")

    @property
    def is_nm(self) -> bool:
        return self.kind == "nm"

    def nominal_sparsity(self, sparsity: float) -> float:
        return 1.0 - self.n / self.m if self.is_nm else sparsity

    def prepare(self, params: Mapping[str, torch.Tensor]) -> list[str]:
        """For N:M: list (and warn about) layers whose input channels are not a multiple of M; they stay dense.
        Raises when that is every layer."""
        if not self.is_nm:
            self.skipped = []
            return []
        skipped = [n for n, p in params.items() if p.dim() < 2 or p.shape[1] % self.m]
        if skipped and len(skipped) == len(params):
            raise ValueError(
                f"N:M {self.n}:{self.m} skips every prunable layer (no input-channel count is a multiple of "
                f"{self.m}: {skipped}), so the model would never be sparse; use target 'global' or 'uniform', or "
                "an M that divides the layers' input channels"
            )
        if skipped:
            warnings.warn(
                f"N:M {self.n}:{self.m}: skipping {len(skipped)} layer(s) whose input channels are not a multiple "
                f"of {self.m} (they stay dense): {skipped}",
                stacklevel=3,
            )
        self.skipped = skipped
        return skipped

    def compute(self, weights: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
        """Masks (True = kept) for ``weights`` at ``sparsity`` (ignored by N:M, whose sparsity is 1 - N/M).
        FSDP2 (DTensor) weights get sharded masks from the exact sharded selection (acdc.distributed.shards)."""
        from .distributed.shards import any_dtensor, sharded_target_masks

        if any_dtensor(weights) is not None:
            return sharded_target_masks(self.kind, weights, sparsity, self.layer_sparsity, self.n, self.m,
                                        self.skipped)
        if self.is_nm:
            out = {}
            for name, w in weights.items():
                if name in self.skipped:
                    out[name] = torch.ones(w.shape, dtype=torch.bool, device=w.device)
                else:
                    out[name] = _masks.n_m(w, self.n, self.m)
            return out
        if self.kind == "uniform":
            if self.layer_sparsity:
                per = {n: self.layer_sparsity.get(n, sparsity) for n in weights}
                return _masks.uniform_magnitude(weights, per)
            return _masks.uniform_magnitude(weights, sparsity)
        return _masks.global_magnitude(weights, sparsity)
