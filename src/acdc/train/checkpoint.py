"""Checkpoints: safetensors weights, atomic writes, resumable run state.

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed over the target, so a
kill at any moment leaves either the old file or the new one. The resumable state ``DIR/last`` is a symlink to a
complete checkpoint directory; a new checkpoint is written in full to a fresh directory and then the symlink is
swapped atomically (``os.replace``), after which older checkpoint directories are removed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

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


def save_model(path: str | Path, model: nn.Module, metadata: dict[str, Any] | None = None) -> None:
    """Model weights (state_dict incl. buffers) as safetensors; metadata values are JSON-encoded."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    save_tensors(path, model.state_dict(), meta)


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


# ---------------------------------------------------------------------- resumable run state
def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_run_state(run_dir: str | Path, *, model: nn.Module, masks: dict[str, torch.Tensor] | None,
                   state: dict[str, Any], epoch: int, compress: bool = False) -> Path:
    """Write a complete resumable checkpoint for ``epoch`` and atomically point ``run_dir/last`` at it.

    ``state`` holds everything else (optimizer, LR scheduler, method, RNG states, counters) and is saved with
    ``torch.save``; weights and masks go to safetensors.
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
        atomic_write_bytes(work / "state.pt", _torch_bytes(state))
        atomic_write_text(work / "meta.json", json.dumps({"epoch": epoch, "complete": True}))
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


def load_run_state(run_dir: str | Path, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Load ``run_dir/last`` into ``model``; returns (state, masks). Raises :class:`CheckpointError` if unusable."""
    last = Path(run_dir) / "last"
    if not last.exists():
        raise CheckpointError(f"no resumable checkpoint at {last}; run without --resume to start fresh")
    meta_path = last / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        msg = f"checkpoint {last} is incomplete ({meta_path}: {e}); delete {last} to start fresh"
        raise CheckpointError(msg) from None
    if not meta.get("complete"):
        raise CheckpointError(f"checkpoint {last} is incomplete; delete it to start fresh")
    from .weights_io import load_weights  # plain or compressed

    masks = load_weights(last, model)
    try:
        state = torch.load(io.BytesIO((last / "state.pt").read_bytes()), weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        msg = f"checkpoint {last / 'state.pt'} is corrupt ({e}); delete {last} to start fresh"
        raise CheckpointError(msg) from None
    return state, masks
