"""CLI subcommands; each module exposes ``register(subparsers)``."""

from __future__ import annotations

import os
from pathlib import Path


def check_out_folder(path: str | Path, flag: str = "--out") -> Path:
    """Fail at once (before any long work) if ``path`` cannot become an output folder."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p} is a file, not a folder; choose a folder path")
    parent = next((a for a in (p, *p.parents) if a.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {p}: {parent} is not a writable folder; choose a writable path")
    return p


def check_out_file(path: str | Path, flag: str) -> Path:
    """Fail at once if ``path`` cannot be written as a file (it is a folder, or its folder is not writable)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {p} is a folder; give a file path (e.g. {p / 'result.json'})")
    parent = next((a for a in p.parents if a.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {p}: {parent} is not a writable folder; choose a writable path")
    return p
