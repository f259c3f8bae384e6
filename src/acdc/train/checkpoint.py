"""Checkpoints: safetensors weights, atomic writes, resumable run state.

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed over the target, so a
kill at any moment leaves either the old file or the new one. The resumable state ``DIR/last`` is a symlink to a
complete checkpoint directory; a new checkpoint is written in full to a fresh directory and then the symlink is
swapped atomically (``os.replace``), after which older checkpoint directories are removed.

Nothing here unpickles: the run state (optimizer, LR scheduler, method, RNG states, counters) is split by
:func:`encode_state` into strict JSON (``state.json``) plus a safetensors file of its tensors
(``state.safetensors``), so a crafted checkpoint can at worst be rejected, never run code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated or corrupt; the message names the file and what to do."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` hold ``src``'s bytes atomically: a hard link when the filesystem allows, else a copy.

    Every writer replaces files (temp + rename), never edits them in place, so a link cannot be changed
    through the other name.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write_bytes(dst, src.read_bytes())
        return
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def _plain_tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied weights): store an independent contiguous copy per key
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically. Bool tensors are stored as uint8 (and restored by the key suffix)."""
    plain = {}
    for k, v in _plain_tensors(tensors).items():
        plain[k] = v.to(torch.uint8) if v.dtype == torch.bool else v
    meta = dict(metadata or {})
    meta["bool_keys"] = json.dumps(sorted(k for k, v in tensors.items() if v.dtype == torch.bool))
    atomic_write_bytes(path, st_save(plain, metadata=meta))


def _read(path: str | Path, tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One pass over a safetensors file: its metadata and (if ``tensors``) every tensor."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            out = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({e}); delete it and re-run, or point to "
                              "an intact checkpoint") from None
    return out, meta


def load_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a safetensors file, without reading its tensors."""
    return _read(path, tensors=False)[1]


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file written by :func:`save_tensors`; corrupt files raise :class:`CheckpointError`."""
    tensors, meta = _read(path, tensors=True)
    bool_keys = set(json.loads(meta.get("bool_keys", "[]")))
    for k in bool_keys & set(tensors):
        tensors[k] = tensors[k].bool()
    return tensors, meta


def save_model(path: str | Path, model: nn.Module, metadata: dict[str, Any] | None = None,
               state: dict[str, torch.Tensor] | None = None) -> None:
    """Model weights (state_dict incl. buffers) as safetensors; metadata values are JSON-encoded. ``state``: the
    model's full state dict when it is not ``model.state_dict()`` (FSDP: gathered to rank 0)."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    save_tensors(path, model.state_dict() if state is None else state, meta)


def load_model(path: str | Path, model: nn.Module, strict: bool = True) -> dict[str, Any]:
    """Load weights saved by :func:`save_model` into ``model``; returns the decoded metadata."""
    tensors, meta = load_tensors(path)
    try:
        model.load_state_dict(tensors, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match the model: {e}") from None
    out = {}
    for k, v in meta.items():
        if k == "bool_keys":
            continue
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# ---------------------------------------------------------------------- pickle-free state codec
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__", "__fraction__")


def encode_state(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, numpy arrays, scalars) into (JSON value, tensors).

    Tensors are replaced by ``{"__tensor__": key}`` references into the returned mapping; tuples, dicts with
    non-string keys, non-finite floats and numpy arrays get tagged forms, so :func:`decode_state` rebuilds the
    exact objects (bitwise for tensors, ``repr``-exact for floats). Anything else raises ``TypeError``.
    """
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any, path: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return float(x) if math.isfinite(x) else {"__float__": repr(float(x))}
        if isinstance(x, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = x
            return {"__tensor__": key}
        if isinstance(x, np.ndarray):
            key = f"t{len(tensors)}"
            wide = x.astype(np.int64) if x.dtype.kind in "iu" else x
            tensors[key] = torch.from_numpy(np.ascontiguousarray(wide).copy())
            return {"__ndarray__": key, "dtype": x.dtype.str}
        if isinstance(x, np.generic):
            return enc(x.item(), path)
        if isinstance(x, Fraction):
            return {"__fraction__": [x.numerator, x.denominator]}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{path}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: enc(v, f"{path}.{k}") for k, v in x.items()}
            return {"__dict__": [[enc(k, path), enc(v, f"{path}.{k}")] for k, v in x.items()]}
        raise TypeError(f"run state value at `{path}` has type {type(x).__name__}, which the checkpoint format "
                        "does not store (use tensors, numbers, strings, lists, tuples or dicts)")

    return enc(obj, "state"), tensors


def decode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`; an unknown tag or missing tensor raises ``ValueError``."""

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        tag = next((t for t in _TAGS if t in x), None)
        if tag is None:
            return {k: dec(v) for k, v in x.items()}
        v = x[tag]
        if tag == "__tensor__":
            if v not in tensors:
                raise ValueError(f"tensor {v!r} is missing")
            return tensors[v]
        if tag == "__ndarray__":
            if v not in tensors:
                raise ValueError(f"tensor {v!r} is missing")
            return tensors[v].numpy().astype(np.dtype(str(x["dtype"])))
        if tag == "__tuple__":
            return tuple(dec(e) for e in v)
        if tag == "__dict__":
            return {dec(k): dec(e) for k, e in v}
        if tag == "__float__":
            if v not in ("nan", "inf", "-inf"):
                raise ValueError(f"bad float {v!r}")
            return float(v)
        return Fraction(int(v[0]), int(v[1]))

    return dec(obj)


# ---------------------------------------------------------------------- resumable run state
def _state_files(state: dict[str, Any]) -> tuple[bytes, dict[str, torch.Tensor]]:
    doc, tensors = encode_state(state)
    return json.dumps(doc, allow_nan=False).encode(), tensors


def save_run_state(run_dir: str | Path, *, model: nn.Module, masks: dict[str, torch.Tensor] | None,
                   state: dict[str, Any], epoch: int, compress: bool = False) -> Path:
    """Write a complete resumable checkpoint for ``epoch`` and atomically point ``run_dir/last`` at it.

    ``state`` holds everything else (optimizer, LR scheduler, method, RNG states, counters); it is stored without
    pickle as ``state.json`` + ``state.safetensors`` (see :func:`encode_state`); weights and masks go to
    ``model.safetensors`` / ``masks.safetensors``.
    """
    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"epoch-{epoch:05d}"
    work = Path(tempfile.mkdtemp(prefix=f".epoch-{epoch:05d}.", dir=ckpts))
    os.chmod(work, 0o777 & ~_UMASK)
    try:
        from .weights_io import save_weights  # compressed when `compress` (sparse phases)

        save_weights(work, model, masks, epoch, compress)
        doc, tensors = _state_files(state)
        save_tensors(work / "state.safetensors", tensors)
        atomic_write_bytes(work / "state.json", doc)
        atomic_write_text(work / "meta.json", json.dumps({"epoch": epoch, "complete": True, "format": 2}))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return publish_checkpoint(run_dir, work, final)


def publish_checkpoint(run_dir: Path, work: Path, final: Path) -> Path:
    """Rename the complete checkpoint directory ``work`` to ``final``, swap ``run_dir/last`` to it atomically and
    remove older checkpoint directories."""
    ckpts = final.parent
    try:
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _fsync_dir(ckpts)
    link = run_dir / "last"
    tmp_link = run_dir / f".last.{os.getpid()}.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(os.path.relpath(final, run_dir), tmp_link)
    if link.exists() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp_link, link)
    _fsync_dir(run_dir)
    for old in ckpts.iterdir():  # keep only the checkpoint `last` points to
        if old != final and (old.name.startswith("epoch-") or old.name.startswith(".epoch-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_dir(run_dir: str | Path) -> Path:
    """The complete checkpoint ``run_dir/last`` points to; raises :class:`CheckpointError` if there is none."""
    last = Path(run_dir) / "last"
    if not last.exists():
        raise CheckpointError(f"no resumable checkpoint at {last}; run without --resume to start fresh")
    meta_path = last / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        msg = f"checkpoint {last} is incomplete ({meta_path}: {e}); delete {last} to start fresh"
        raise CheckpointError(msg) from None
    if not isinstance(meta, dict) or not meta.get("complete"):
        raise CheckpointError(f"checkpoint {last} is incomplete; delete it to start fresh")
    return last


def read_run_state(ckpt: str | Path) -> dict[str, Any]:
    """The run state (everything but weights and masks) of one checkpoint directory, read without unpickling."""
    ckpt = Path(ckpt)
    doc_path = ckpt / "state.json"
    if not doc_path.is_file() and (ckpt / "state.pt").exists():
        raise CheckpointError(f"checkpoint {ckpt} stores its state as a pickle (state.pt, an older format) that "
                              "acdc does not load because unpickling can run code; start fresh without --resume")
    try:
        doc = json.loads(doc_path.read_text(), parse_constant=_reject_constant)
        tensors = load_tensors(ckpt / "state.safetensors")[0]
        state = decode_state(doc, tensors)
    except CheckpointError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as e:
        msg = f"checkpoint state {doc_path} is corrupt ({e}); delete {ckpt} to start fresh"
        raise CheckpointError(msg) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint state {doc_path} is corrupt (not a mapping); delete {ckpt} to start fresh")
    return state


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def load_run_state(run_dir: str | Path, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Load ``run_dir/last`` into ``model``; returns (state, masks). Raises :class:`CheckpointError` if unusable."""
    from .weights_io import load_weights  # plain or compressed

    last = checkpoint_dir(run_dir)
    state = read_run_state(last)  # first: a corrupt or refused state leaves the model untouched
    masks = load_weights(last, model)
    return state, masks
