"""TensorBoard event files from the per-epoch metrics records (``acdc train --log tensorboard``).

Every record written to ``metrics.jsonl`` becomes scalars in ``OUT/tensorboard/`` (``tensorboardX`` writer, extra
``tensorboard``), on one x-axis: the global optimizer step. An epoch's record is logged at the step that ends it,
``(epoch + 1) * steps_per_epoch``; an in-phase mask update at the step it happened. Mapping (:func:`scalars`):

- every top-level number keeps its ``metrics.jsonl`` name: ``train_loss``, ``val_loss``, ``train_acc``,
  ``val_acc``, ``lr``, ``sparsity``, ``train_flops_cum_rel`` (cumulative training FLOPs / dense run's), ...
- ``phase_sparse``: 1 for a sparse epoch, 0 for a dense one;
- ``density/<param>``: 1 - per-layer sparsity;
- ``mask_diff/compression`` (AC/DC compressions after the first) and ``mask_diff/update`` (GMP/RigL/SET/Top-KAST).

A resumed run purges events past its checkpoint (``purge_step``), so TensorBoard shows what ``metrics.jsonl`` holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

BACKENDS = ("none", "tensorboard")
EVENT_PREFIX = "events.out.tfevents."


def _summary_writer() -> type:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError("logging to TensorBoard needs tensorboardX: pip install 'acdc-train[tensorboard]' "
                          "(or set `log: none`)") from None
    return SummaryWriter


def check_backend(name: str) -> None:
    """Fail early (before training) when ``name`` is unknown or its package is missing."""
    if name not in BACKENDS:
        raise ValueError(f"unknown log backend {name!r}; choose one of {list(BACKENDS)}")
    if name == "tensorboard":
        _summary_writer()


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def scalars(rec: Mapping[str, Any], steps_per_epoch: int, step_offset: int = 0) -> Iterator[tuple[str, int, float]]:
    """``(tag, step, value)`` for one metrics record (see the module docstring for the mapping).

    ``step_offset`` is the global step at which the method was built (non-zero for runs that start mid-schedule,
    e.g. ``finetune-dense``), since mask-update steps count from there.
    """
    step = (int(rec["epoch"]) + 1) * steps_per_epoch
    for key, v in rec.items():
        if key == "phase":
            yield "phase_sparse", step, 1.0 if v == "sparse" else 0.0
        elif key == "layer_sparsity":
            for name, s in v.items():
                yield f"density/{name}", step, 1.0 - float(s)
        elif key == "compressions":
            for c in v:
                if _number(c.get("mask_diff")):
                    yield "mask_diff/compression", step, float(c["mask_diff"])
        elif key == "mask_updates":
            for u in v:
                if _number(u.get("mask_diff")):
                    yield "mask_diff/update", step_offset + int(u["step"]), float(u["mask_diff"])
        elif _number(v):
            yield key, step, float(v)


class NullLogger:
    """``log: none``."""

    def log(self, rec: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Writes :func:`scalars` of each record to ``log_dir``; flushed after every record."""

    def __init__(self, log_dir: str | Path, steps_per_epoch: int, *, start_epoch: int = 0, step_offset: int = 0,
                 resume: bool = False) -> None:
        writer_cls = _summary_writer()
        log_dir = Path(log_dir)
        if not resume and log_dir.is_dir():  # a fresh run replaces the old run's curves
            for f in log_dir.glob(EVENT_PREFIX + "*"):
                f.unlink()
        self.steps_per_epoch = steps_per_epoch
        self.step_offset = step_offset
        # on resume, hide events written after the checkpoint (steps past the last completed epoch)
        purge = start_epoch * steps_per_epoch + 1 if resume else None
        # tensorboardX names files by the second and opens them with "wb": a nanosecond suffix keeps a resume in the
        # same second from overwriting the earlier file, and keeps TensorBoard's name order = write order
        self.writer = writer_cls(str(log_dir), purge_step=purge, flush_secs=10, filename_suffix=f".{time.time_ns()}")

    def log(self, rec: Mapping[str, Any]) -> None:
        for tag, step, value in scalars(rec, self.steps_per_epoch, self.step_offset):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_logger(name: str, out_dir: str | Path, steps_per_epoch: int, *, start_epoch: int = 0,
                step_offset: int = 0, resume: bool = False) -> NullLogger | TensorBoardLogger:
    """The run logger for recipe key ``log`` (``OUT/tensorboard/`` for ``tensorboard``)."""
    check_backend(name)
    if name == "none":
        return NullLogger()
    return TensorBoardLogger(Path(out_dir) / "tensorboard", steps_per_epoch, start_epoch=start_epoch,
                             step_offset=step_offset, resume=resume)
