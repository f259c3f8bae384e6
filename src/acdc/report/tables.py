"""Table cells and tables shared by ``acdc report`` and ``acdc compare``: one number style, one empty cell.

:data:`EMPTY` is the cell of a value a run does not have (one dash style everywhere: an en dash).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

__all__ = ["EMPTY", "fmt_num", "fmt_pct", "fmt_pm", "fmt_secs", "html_table", "md_table"]

EMPTY = "–"


def fmt_num(v: float | None, digits: int) -> str:
    """``v`` with ``digits`` decimals; :data:`EMPTY` for None or NaN."""
    return EMPTY if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_pm(mean: float | None, std: float | None, digits: int = 2) -> str:
    """``mean ± std`` (just the mean without a std); :data:`EMPTY` without a mean."""
    if mean is None:
        return EMPTY
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_pct(v: float | None, digits: int = 2, count: int | None = None, total: int | None = None) -> str:
    """A fraction as a percentage that never hides a non-zero value: ``digits`` decimals, or two significant
    digits when those decimals would print 0 (10 of 206,736 -> ``0.0048%``, not ``0.00%``); with ``count`` and
    ``total`` the count follows (``0.0048% (10 of 206,736)``)."""
    if v is None:
        return EMPTY
    x = 100 * v
    if x != 0 and round(x, digits) == 0:
        digits = 1 - math.floor(math.log10(abs(x)))
    out = f"{x:.{digits}f}%"
    if count is not None and total:
        out += f" ({count:,} of {total:,})"
    return out


def fmt_secs(v: float | None) -> str:
    """Seconds below two minutes, else ``XmYYs`` / ``XhYYm``."""
    if v is None:
        return EMPTY
    if v < 120:
        return f"{v:.1f} s"
    h, rem = divmod(int(round(v)), 3600)
    return f"{h}h {rem // 60:02d}m" if h else f"{rem // 60}m {rem % 60:02d}s"


def md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table (``|`` in cells escaped)."""
    esc = [[c.replace("|", "\\|") for c in row] for row in [list(head), *body]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


def html_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """An HTML table (cells escaped)."""
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{rows}</tbody></table>"
