"""Resumable checkpoints of ``strategy: fsdp`` runs with ``torch.distributed.checkpoint`` (DCP).

A checkpoint directory (``DIR/last`` points to it, swapped atomically as in :mod:`acdc.train.checkpoint`) holds:

- ``dcp/``: every tensor of the run state, written by all ranks in parallel, each its own shards: model weights,
  optimizer state (keyed by parameter name, so it reshards), masks and the mask trackers' previous masks (bool
  DTensors placed like their weights under FSDP). DCP reshards on load, so a checkpoint written by N ranks resumes
  on M ranks, including a single process without a process group (plain tensors are filled from the shards).
- ``state.json`` + ``state.safetensors`` (rank 0): everything else — optimizer hyper-parameters (param_groups), LR
  scheduler, method (steps, phase, schedule), trackers, counters, RNG states — through the same pickle-free codec.
- ``meta.json``: ``{"format": "dcp", "world": N, ...}``, written last; a checkpoint without it is incomplete.

Atomicity: rank 0 creates a fresh temporary directory, every rank writes its DCP shards there, DCP's coordinator
(rank 0) writes the metadata after gathering every rank's write results, rank 0 writes the state files and renames
the directory into place, then a barrier. Ranks must share the run folder's filesystem (one machine, or a shared
filesystem), as DCP's file writer requires.

Pickle: DCP's ``.metadata`` file is a pickle (``torch.distributed.checkpoint.FileSystemReader.read_metadata`` calls
``pickle.load`` in torch 2.14.1). Loading here never uses that: :class:`SafeFileSystemReader` unpickles it with an
allow-list of DCP's own metadata classes, ``torch.Size``, dtypes, layouts and paths (anything else raises), and the
tensor payloads are read by DCP with ``torch.load(weights_only=True)``. Only tensors are ever requested (no
``BytesIO`` items, which DCP would unpickle freely).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..distributed.shards import like, local
from .checkpoint import (
    CheckpointError,
    _state_files,
    atomic_write_bytes,
    atomic_write_text,
    checkpoint_dir,
    publish_checkpoint,
    read_run_state,
    save_tensors,
)

FORMAT = "dcp"
_MASK_SETS = ("masks", "tracker_masks", "update_masks")

_ALLOWED = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata only: DCP's metadata dataclasses and a few torch/stdlib value types."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" or (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"DCP metadata refers to {module}.{name}, which acdc does not load")


def _read_metadata(path: Path) -> Any:
    """DCP's ``.metadata`` through the allow-listed unpickler; :class:`CheckpointError` when it is refused."""
    try:
        with open(path, "rb") as fh:
            return _MetadataUnpickler(fh).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise CheckpointError(f"DCP metadata {path} is not loadable ({e}); delete the checkpoint to start "
                              "fresh") from None


def _safe_reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        """DCP's file reader with an allow-listed unpickler for ``.metadata`` (see the module docstring)."""

        def read_metadata(self, *args: Any, **kwargs: Any):
            rank = kwargs.get("rank")
            metadata = _read_metadata(Path(self._get_metadata_path(rank)))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(str(path))


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every save/load without a process group (a 1-process run); that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _mask_templates(names: list[str] | None, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor] | None:
    """Bool tensors to load saved masks into: this rank's rows, wrapped like each parameter."""
    if names is None:
        return None
    unknown = [n for n in names if n not in params]
    if unknown:
        raise CheckpointError(f"checkpoint masks name parameters {unknown[:5]} that this model's prunable set lacks; "
                              "resume with the recipe that wrote the checkpoint")
    return {n: like(torch.zeros(local(params[n]).shape, dtype=torch.bool, device=params[n].device), params[n])
            for n in names}


def save_sharded_run_state(run_dir: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                           mask_sets: dict[str, dict[str, torch.Tensor] | None], state: dict[str, Any], epoch: int,
                           dist_ctx: Any) -> None:
    """Write one checkpoint from every rank (collective) and point ``run_dir/last`` at it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    work = ckpts / f".epoch-{epoch:05d}.dcp-tmp"
    if dist_ctx.is_main:
        ckpts.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
    dist_ctx.barrier()
    osd = get_optimizer_state_dict(model, optimizer)
    tensors: dict[str, Any] = {"model": get_model_state_dict(model), "optim": osd["state"]}
    tensors.update({k: v for k, v in mask_sets.items() if v is not None})
    try:
        with _single_process_quiet():
            dcp.save(tensors, checkpoint_id=str(work / "dcp"))
        if dist_ctx.is_main:
            doc, plain = _state_files({**state, "param_groups": osd["param_groups"],
                                       "mask_sets": {k: None if v is None else list(v) for k, v in mask_sets.items()}})
            save_tensors(work / "state.safetensors", plain)
            atomic_write_bytes(work / "state.json", doc)
            atomic_write_text(work / "meta.json", json.dumps({"epoch": epoch, "complete": True, "format": FORMAT,
                                                              "world": dist_ctx.world}))
            publish_checkpoint(run_dir, work, ckpts / f"epoch-{epoch:05d}")
    except BaseException:
        if dist_ctx.is_main:
            shutil.rmtree(work, ignore_errors=True)
        raise
    dist_ctx.barrier()


def is_sharded_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir/last`` was written by :func:`save_sharded_run_state`."""
    meta = json.loads((checkpoint_dir(run_dir) / "meta.json").read_text())
    return meta.get("format") == FORMAT


def load_sharded_run_state(run_dir: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                           params: dict[str, nn.Parameter]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``run_dir/last`` into ``model`` and ``optimizer`` (collective under FSDP; plain in one process).

    Returns (state, mask sets); the masks come back placed like ``params`` (DTensors under FSDP)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    last = checkpoint_dir(run_dir)
    if not is_sharded_checkpoint(run_dir):
        raise CheckpointError(f"checkpoint {last} was written by a run without `distributed.strategy: fsdp`; resume "
                              "it with the strategy that wrote it (ddp or one process)")
    state = read_run_state(last)  # pickle-free JSON + safetensors, read before touching the model
    _read_metadata(last / "dcp" / ".metadata")  # a refused metadata file fails here, with a clear error
    names = state.pop("mask_sets", {})
    mask_sets = {k: _mask_templates(names.get(k), params) for k in _MASK_SETS}
    msd = get_model_state_dict(model)
    osd = get_optimizer_state_dict(model, optimizer)  # a fresh optimizer's state is created (zero-lr step) to fill
    tensors: dict[str, Any] = {"model": msd, "optim": osd["state"]}
    tensors.update({k: v for k, v in mask_sets.items() if v is not None})
    no_dist = not (dist.is_available() and dist.is_initialized())
    with _single_process_quiet():
        dcp.load(tensors, storage_reader=_safe_reader(last / "dcp"), no_dist=no_dist)
    set_model_state_dict(model, msd)
    osd["param_groups"] = state.pop("param_groups")
    set_optimizer_state_dict(model, optimizer, osd)
    return state, mask_sets



def load_sharded_masks(run_dir: str | Path, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The masks of a DCP checkpoint ``run_dir/last`` as full plain tensors (one process, e.g. for export);
    None when it holds none (a dense phase). ``params``: name -> tensor of the full shape."""
    import torch.distributed.checkpoint as dcp

    last = checkpoint_dir(run_dir)
    names = read_run_state(last).get("mask_sets", {}).get("masks")
    if names is None:
        return None
    _read_metadata(last / "dcp" / ".metadata")
    masks = _mask_templates(names, params)
    try:
        with _single_process_quiet():
            dcp.load({"masks": masks}, storage_reader=_safe_reader(last / "dcp"), no_dist=True)
    except Exception as e:  # DCP wraps every reader error in its own CheckpointException
        raise CheckpointError(f"cannot read the masks of DCP checkpoint {last} ({e})") from None
    return masks
