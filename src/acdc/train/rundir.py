"""One writer per run folder: an exclusive lock, refusal of another run's files, recipe checks on ``--resume``.

:func:`claim_run_dir` runs before any data is loaded, so a wrong ``--out`` fails at once with a one-line
:class:`RunDirError`; the folder it had to create is removed again if the run never starts.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from .recipe import Recipe, RecipeError, dump_recipe, parse_recipe

LOCK_NAME = ".acdc.lock"
# what a run writes; any of these in a fresh run's folder belongs to another run
_RUN_FILES = ("metrics.jsonl", "summary.json", "last", "checkpoints", "finetune_dense", "tensorboard")
_IGNORED_KEYS = ("progress",)  # cosmetic: may change between a run and its resume


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message names the folder and the fix."""


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def recipe_differences(run_dir: Path, recipe: Recipe) -> list[str]:
    """Dotted keys whose values differ between ``run_dir/recipe.yaml`` and ``recipe`` (empty if no file)."""
    p = run_dir / "recipe.yaml"
    if not p.is_file():
        return []
    try:  # normalised through the parser, so defaults written out or left implicit compare equal
        saved = yaml.safe_load(dump_recipe(parse_recipe(yaml.safe_load(p.read_text()) or {})))
    except (OSError, yaml.YAMLError, RecipeError) as e:
        raise RunDirError(f"cannot read {p} ({e}); restore it or start a new run with another --out") from None
    a, b = _flat(saved), _flat(yaml.safe_load(dump_recipe(recipe)))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _IGNORED_KEYS)


def stale_files(run_dir: Path, recipe: Recipe) -> list[str]:
    """Files of another run in ``run_dir`` (a recipe.yaml equal to ``recipe`` alone is a restart, not stale)."""
    if not run_dir.is_dir():
        return []
    names = [n for n in _RUN_FILES if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    names += sorted(p.name for p in run_dir.glob("*.safetensors"))
    if (run_dir / "recipe.yaml").is_file() and (names or recipe_differences(run_dir, recipe)):
        names.append("recipe.yaml")
    return names


class RunDir:
    """A claimed run folder: holds the lock until :meth:`release`."""

    def __init__(self, path: Path, fd: int, created: list[Path]) -> None:
        self.path, self._fd, self.created = path, fd, created  # created: the folders this claim made, leaf first

    def remove_stale(self, recipe: Recipe) -> None:
        """``--overwrite``: delete every file of the previous run (models, metrics, checkpoints, summary)."""
        for name in stale_files(self.path, recipe):
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def discard(self) -> None:
        """Undo the claim of a run that never started: remove the folder if this claim created it."""
        self.release()
        if self.created:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
        for d in self.created:
            try:
                d.rmdir()
            except OSError:
                break

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock; the (empty) lock file stays, so no lock race on unlink
            self._fd = -1


def claim_run_dir(path: str | Path, recipe: Recipe, *, resume: bool, overwrite: bool) -> RunDir:
    """Check ``path`` for the run and take its exclusive lock; raises :class:`RunDirError` with the fix."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a folder; choose a folder path for the run")
    if resume and not (path / "last").exists():
        raise FileNotFoundError(f"--resume: no checkpoint in {path / 'last'}; run without --resume to start fresh")
    created = [a for a in (path, *path.absolute().parents) if not a.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunDirError(f"cannot write to run folder {path} ({e.strerror}); choose a writable --out") from None
    claim = RunDir(path, fd, created)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"another acdc process is writing to {path} (it holds {path / LOCK_NAME}); wait for "
                              "it to finish or choose another --out") from None
        if resume:
            diff = recipe_differences(path, recipe)
            if diff:
                raise RunDirError(f"--resume: the recipe differs from {path / 'recipe.yaml'} in {', '.join(diff)}; "
                                  "resume with the run's recipe, or start a new run (another --out, or --overwrite)")
        elif not overwrite:
            stale = stale_files(path, recipe)
            if stale:
                raise RunDirError(f"{path} already holds another run ({', '.join(stale[:5])}); continue it with "
                                  "--resume, replace it with --overwrite, or choose another --out")
    except BaseException:
        claim.discard()
        raise
    return claim
