"""Which parameters are prunable (which positions of them are kept: :mod:`acdc.selection`).

Default prunable set: the ``weight`` of every Conv1d/2d/3d and Linear module, first and last layer included (the
paper's headline setting); never biases or normalization parameters. A tied weight (one tensor used by several
modules, e.g. an LM's embedding and output head) is one prunable parameter under its first name; patterns match any
of its names. ``include`` / ``exclude`` are glob patterns
(``fnmatch``) on parameter names; ``include`` replaces the default set, ``exclude`` removes from it. A pattern that
matches nothing is an error, so typos cannot silently leave a layer dense.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from torch import nn

from .selection import Target

__all__ = ["PRUNABLE_TYPES", "Target", "parameter_aliases", "prunable_parameters"]  # Target: re-exported

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
