"""The epoch loop behind ``acdc train``: any method from the registry, per-epoch validation, metrics, checkpoints.

Order inside an epoch (so an epoch's metrics describe the model that trained in that epoch's phase)::

    for each batch: forward, backward, optimizer.step(), lr_scheduler.step(), method.step()   # except the last
    validate; log metrics (incl. FLOPs and mask dynamics); save the dense model (recipe `dense_pick`, `dense_from`)
    method.step() for the last batch  -> a phase transition (compress/decompress) happens here
    save the resumable checkpoint DIR/last

Resuming restores weights, masks, optimizer, LR scheduler, method state and RNG states at an epoch boundary, and
the train loader reshuffles from a per-epoch seed, so a resumed run is bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import data as data_mod
from ..integrations.tensorboard import check_backend, open_logger
from ..masking import kept_counts
from ..masks import keep_count
from ..measure.dynamics import MaskTracker
from ..measure.flops import epoch_training_flops_rel, inference_flops, step_flops_per_sample
from ..methods import build_method
from ..methods.base import SparseMethod
from . import distributed as dist_mod
from .build import (
    build_model,
    build_optimizer,
    lr_factor_fn,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from .checkpoint import atomic_write_text, link_or_copy, load_model, load_run_state, save_model, save_run_state
from .evaluate import evaluate, loss_and_correct
from .recipe import Recipe, dump_recipe
from .rundir import RunDir, claim_run_dir
from .sharded_checkpoint import load_sharded_run_state, save_sharded_run_state

try:  # progress bars are optional at import time
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


class NonFiniteError(FloatingPointError):
    """Training produced a NaN/inf loss or weight; the run stopped with its last good checkpoint untouched."""


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None``, so ``json.dumps(allow_nan=False)`` holds."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def strict_json(obj: Any, **kw: Any) -> str:
    """Standard JSON (no bare NaN/Infinity): non-finite floats become null."""
    return json.dumps(finite_or_null(obj), allow_nan=False, **kw)


def read_metrics_lines(path: Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl``; a torn last line (a kill mid-append) is dropped, any other bad line raises."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    out = []
    for i, ln in enumerate(lines):
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path} line {i + 1} is not JSON ({e}); fix or delete the line, then --resume") from None
    return out


# ---------------------------------------------------------------------- the trainer
@dataclass
class TrainResult:
    out_dir: Path
    summary: dict[str, Any]


class Trainer:
    """Runs one recipe into ``out_dir`` (see module docstring for the files it writes)."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, *, resume: bool = False, progress: bool | None = None,
                 init_weights: str | Path | None = None, start_epoch: int = 0,
                 bundle: data_mod.DataBundle | None = None,
                 epoch_hooks: list[Callable[[Trainer, int], dict[str, Any]]] | None = None,
                 compress_checkpoints: bool = False, overwrite: bool = False) -> None:
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.overwrite = overwrite  # a fresh run may replace another run's files in out_dir
        self.progress = recipe.progress if progress is None else progress
        self.init_weights = init_weights
        self.start_epoch = start_epoch
        self._bundle = bundle
        # called after each epoch's validation (before the phase transition); returned dicts join metrics.jsonl
        self.epoch_hooks = list(epoch_hooks or [])
        self.compress_checkpoints = compress_checkpoints  # sparse-phase checkpoints as bitmask + non-zeros

    # -------------------------------------------------------------- setup (all validation happens here)
    def setup(self) -> None:
        """Build everything a run needs from the recipe, in a fixed order (the seeded RNG draws depend on it)."""
        r = self.recipe
        self.device = resolve_device(r.device)
        self.dist = dist_mod.init_distributed(dataclasses.asdict(r.distributed), self.device)
        self.progress = self.progress and self.dist.is_main
        self.local_batch = self.dist.local_batch(r.batch_size)
        if self.compress_checkpoints and r.distributed.strategy == "fsdp":
            raise ValueError("--compress-checkpoints does not apply to `distributed.strategy: fsdp` (its checkpoints "
                             "are sharded DCP folders); drop the flag")
        if r.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("recipe key `amp: fp16` needs device cuda (fp16 GradScaler); use `amp: bf16` on CPU")
        check_backend(r.log)
        seed_everything(r.seed)
        self._setup_model()
        self._setup_loaders()
        self._setup_training()
        self.state: dict[str, Any] = {"epoch": self.start_epoch, "best_dense": None, "last_dense": None,
                                      "elapsed": 0.0, "train_flops_cum": 0.0}

    def _setup_model(self) -> None:
        """Data, model, example input and the dense-baseline FLOPs (of the fresh, zero-free model)."""
        self.bundle = self._bundle or data_mod.build(self.recipe.data, seed=self.recipe.seed)
        self.task = self.bundle.task
        self.model = build_model(self.recipe, self.bundle).to(self.device)
        self.example = self._example_input()
        self.f_dense = float(inference_flops(self.model, self.example)) if self.recipe.measure_flops else 0.0
        if self.init_weights:
            load_model(self.init_weights, self.model)
        self.model = self.dist.shard(self.model, self.device)  # FSDP2: DTensor parameters from here on

    def _setup_loaders(self) -> None:
        """Train loader (per-epoch seeded shuffle; this rank's share under torchrun), val/test loaders, step counts."""
        r = self.recipe
        self.train_gen = torch.Generator()
        self.train_sampler = None
        if self.dist.active:  # this rank's share of the single-process per-epoch permutation
            self.train_sampler = dist_mod.EpochShardSampler(len(self.bundle.train), self.dist.rank, self.dist.world,
                                                            self._epoch_seed)
        # with gradient accumulation a short last batch would weigh as much as a full one: drop it
        self.train_loader = DataLoader(self.bundle.train, batch_size=self.local_batch,
                                       shuffle=self.train_sampler is None, sampler=self.train_sampler,
                                       drop_last=r.grad_accum > 1, generator=self.train_gen, num_workers=r.num_workers)
        self.val_loader = self._eval_loader(self.bundle.val)
        self.test_loader = None if self.bundle.test is None else self._eval_loader(self.bundle.test)
        n_batches = len(self.train_loader)
        if r.max_steps_per_epoch:
            n_batches = min(n_batches, r.max_steps_per_epoch * r.grad_accum)
        if n_batches < r.grad_accum:
            raise ValueError(f"recipe key `grad_accum` ({r.grad_accum}) exceeds the batches per epoch ({n_batches})")
        self.batches_per_epoch = n_batches - n_batches % r.grad_accum
        self.steps_per_epoch = self.batches_per_epoch // r.grad_accum

    def _setup_training(self) -> None:
        """Optimizer, LR schedule (continuing at ``start_epoch``), the sparse method, mask trackers, DDP wrapper."""
        r = self.recipe
        self.optimizer = build_optimizer(r, self.model)
        fn = lr_factor_fn(r, self.steps_per_epoch)
        offset = self.start_epoch * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: fn(s + offset))
        self.method: SparseMethod = build_method(
            r.method_name, self.model, self.optimizer, steps_per_epoch=self.steps_per_epoch,
            epochs=r.epochs - self.start_epoch, sparsity=r.sparsity, options=r.method_options())
        self.method.grad_group = self.dist.data_parallel_group()  # DDP: per-rank raw gradients get averaged
        self.scaler = torch.amp.GradScaler("cuda") if r.amp == "fp16" else None
        self.tracker = MaskTracker()  # AC/DC-style compressions
        self.update_tracker = MaskTracker()  # in-phase mask updates (GMP, RigL, SET, Top-KAST)
        if self.method.masks is not None:  # masks the method set up at construction: baseline for updates
            self.update_tracker.on_compress(self.start_epoch, self.method.masks)
        self._pending: dict[str, Any] = {}  # mask events since the last metrics line
        self.method.add_listener(self._on_event)
        self.train_model = self.dist.wrap(self.model, self.device)  # DDP when launched distributed

    def _eval_loader(self, ds: Any) -> DataLoader:
        """Evaluation loader; ``eval_max_batches`` keeps a fixed class-stratified sample, not the first batches."""
        r = self.recipe
        if r.eval_max_batches:
            ds = data_mod.eval_subset(ds, r.eval_max_batches * r.eval_batch_size)
        return DataLoader(ds, batch_size=r.eval_batch_size, shuffle=False, num_workers=r.num_workers)

    def _evaluate(self) -> tuple[dict[str, float], dict[str, float] | None]:
        """(validation, test) results of the current model; test is None without a separate test split."""
        self.dist.sync_buffers(self.model)  # FSDP: every rank evaluates (and checkpoints) rank 0's BN statistics
        val = evaluate(self.model, self.val_loader, self.task, self.device, 0, self._amp_ctx)
        test = None
        if self.test_loader is not None:
            test = evaluate(self.model, self.test_loader, self.task, self.device, 0, self._amp_ctx)
        self.dist.reshard(self.model)  # FSDP: a forward without backward leaves the root unsharded
        return val, test

    def _model_phase(self) -> str:
        """``sparse`` when the method's masks prune at least one weight, else ``dense``: the label describes the
        evaluated model (GMP before its ramp has masks that prune nothing: that model is dense)."""
        masks = self.method.masks
        if masks is None:
            return "dense"
        return "sparse" if any(k < masks[n].numel() for n, k in kept_counts(masks).items()) else "dense"

    def _dense_eligible(self) -> bool:
        """Whether this epoch's dense model may become the run's dense model (recipe key ``dense_from``)."""
        if self.recipe.dense_from == "any" or not self.method.yields_sparse:
            return True
        return self.method.compressions >= 1

    def _amp_ctx(self):
        if self.recipe.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.recipe.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _example_input(self) -> torch.Tensor:
        shape = (1, *self.bundle.input_shape)
        dtype = torch.long if self.task == "lm" else torch.float32
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def _epoch_seed(self, epoch: int) -> int:
        return self.recipe.seed * 1_000_003 + epoch

    def _on_event(self, event: str, info: dict) -> None:
        self.dist.check_masks(self.method.masks, f"{event} (step {info['step']})", self.method.masked.params,
                              self._expected_kept() if event == "compress" else None)
        if event in ("compress", "update") and info.get("masks") is not None:
            n = sum(m.numel() for m in info["masks"].values())
        if event == "compress":
            rec = self.tracker.on_compress(info["epoch"], info["masks"])
            self._pending.setdefault("compressions", []).append(
                {k: rec[k] for k in ("compression", "epoch", "mask_diff", "mask_diff_per_layer") if k in rec}
                | _diff_count(rec["mask_diff"], n))
        elif event == "update" and info.get("masks") is not None:
            rec = self.update_tracker.on_compress(info["epoch"], info["masks"])
            self._pending.setdefault("mask_updates", []).append(
                {"step": info["step"], "epoch": info["epoch"], "mask_diff": rec["mask_diff"]}
                | _diff_count(rec["mask_diff"], n))
        self._pending.setdefault("events", []).append({"event": event, "step": info["step"], "epoch": info["epoch"]})

    def _expected_kept(self) -> int | None:
        """Weights a global-magnitude compression keeps: exactly ``keep_count(n, s)`` (None for other targets)."""
        if getattr(self.method.target, "kind", None) != "global":
            return None
        return keep_count(self.method.masked.numel(), self.method.target_sparsity)

    # -------------------------------------------------------------- resume
    def _sharded_checkpoints(self) -> bool:
        """``strategy: fsdp`` runs (any world size, one process too) keep DCP checkpoints, so they reshard."""
        return self.recipe.distributed.strategy == "fsdp"

    def _restore(self) -> None:
        if self._sharded_checkpoints():
            # undo what the method's constructor did first: DCP loads into local shards, which DTensor version
            # counters do not see, so the method could not tell afterwards that the weights were loaded over
            self.method._undo_construction()
            state, sets = load_sharded_run_state(self.out_dir, model=self.model, optimizer=self.optimizer,
                                                 params=self.method.masked.params)
            state["tracker"]["prev_masks"] = sets["tracker_masks"]
            if state.get("update_tracker") is not None:
                state["update_tracker"]["prev_masks"] = sets["update_masks"]
            self._restore_rest(state, sets["masks"])
            return
        state, masks = load_run_state(self.out_dir, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self._restore_rest(state, masks)

    def _restore_rest(self, state: dict[str, Any], masks: dict[str, torch.Tensor] | None) -> None:
        """Everything after the weights and optimizer: scheduler, method, trackers, counters, RNG, metrics lines."""
        self.scheduler.load_state_dict(state["scheduler"])
        mstate = dict(state["method"])
        mstate["masks"] = masks
        self.method.load_state_dict(mstate)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.tracker.load_state_dict(state["tracker"])
        if state.get("update_tracker") is not None:
            self.update_tracker.load_state_dict(state["update_tracker"])
        self.state = state["run"]
        self._pending = dict(state.get("pending") or {})  # events after the last metrics line (e.g. a compression)
        set_rng_state(state["rng"])
        # drop metrics lines written after the checkpoint (a crash between the two) and a torn last line
        mpath = self.out_dir / "metrics.jsonl"
        if mpath.exists():
            keep = [m for m in read_metrics_lines(mpath) if m["epoch"] < self.state["epoch"]]
            if self.dist.is_main:
                atomic_write_text(mpath, "".join(strict_json(m) + "\n" for m in keep))

    def _checkpoint(self) -> None:
        if self._sharded_checkpoints():
            self._sharded_checkpoint()
            return
        if not self.dist.is_main:
            return
        mstate = self.method.state_dict()
        masks = mstate.pop("masks", None)
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "method": mstate, "scaler": self.scaler.state_dict() if self.scaler else None,
                 "tracker": self.tracker.state_dict(), "update_tracker": self.update_tracker.state_dict(),
                 "run": dict(self.state), "rng": rng_state(), "pending": self._pending}
        save_run_state(self.out_dir, model=self.model, masks=masks, state=state, epoch=self.state["epoch"],
                       compress=self.compress_checkpoints)

    def _sharded_checkpoint(self) -> None:
        """DCP checkpoint from every rank: tensors (weights, optimizer state, masks) sharded, the rest as JSON."""
        mstate = self.method.state_dict()
        masks = mstate.pop("masks", None)
        tracker, update = self.tracker.state_dict(), self.update_tracker.state_dict()
        sets = {"masks": masks, "tracker_masks": tracker.pop("prev_masks"), "update_masks": update.pop("prev_masks")}
        state = {"scheduler": self.scheduler.state_dict(), "method": mstate,
                 "scaler": self.scaler.state_dict() if self.scaler else None, "tracker": tracker,
                 "update_tracker": update, "run": dict(self.state), "rng": rng_state(), "pending": self._pending}
        save_sharded_run_state(self.out_dir, model=self.model, optimizer=self.optimizer, mask_sets=sets, state=state,
                               epoch=self.state["epoch"], dist_ctx=self.dist)

    # -------------------------------------------------------------- one epoch of training
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (all but its last ``method.step()``); mean loss/accuracy over the global batch."""
        self.model.train()
        self.train_gen.manual_seed(self._epoch_seed(epoch))
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        # running sums stay on the device: no host synchronisation per step
        sums = {"loss": torch.zeros((), dtype=torch.float64, device=self.device),
                "correct": torch.zeros((), dtype=torch.int64, device=self.device),
                "first_bad": torch.full((), -1, dtype=torch.int64, device=self.device)}  # first non-finite step
        bar = None
        if self.progress and tqdm is not None:
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.recipe.epochs} "
                       f"[{self.method.phase}]", leave=False, dynamic_ncols=True)
        tot_n = self._train_batches(sums, bar)
        if bar is not None:
            bar.close()
        n_seen = torch.tensor(tot_n, dtype=torch.int64, device=self.device)
        self.dist.sum_(sums["loss"], sums["correct"], n_seen)  # metrics over the global batch
        tot_n = int(n_seen)
        self._stop_if_non_finite(epoch, sums)
        return {"loss": float(sums["loss"]) / max(1, tot_n), "acc": int(sums["correct"]) / max(1, tot_n)}

    def _train_batches(self, sums: dict[str, torch.Tensor], bar: Any) -> int:
        """Forward/backward every batch of the epoch, an optimizer step every ``grad_accum`` batches; samples seen."""
        r = self.recipe
        tot_n, micro, step_in_epoch = 0, 0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(self.train_loader):
            if i >= self.batches_per_epoch:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._amp_ctx():
                out = self.train_model(x)
            loss, correct, n = loss_and_correct(out, y, self.task, r.label_smoothing)
            scaled = loss / r.grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            sums["loss"] += loss.detach().double() * n
            bad = (sums["first_bad"] < 0) & ~torch.isfinite(loss.detach())
            sums["first_bad"] = torch.where(bad, step_in_epoch, sums["first_bad"])
            sums["correct"] += correct
            tot_n += n
            micro += 1
            if micro % r.grad_accum:
                continue
            self._optimizer_step()
            step_in_epoch += 1
            if step_in_epoch < self.steps_per_epoch:  # the epoch's last method.step() runs after validation
                self.method.step()
            if bar is not None:
                bar.update(1)
                if step_in_epoch % 10 == 0:
                    bar.set_postfix(loss=f"{float(sums['loss']) / tot_n:.3f}")
        return tot_n

    def _optimizer_step(self) -> None:
        """Clip (after unscaling), step the optimizer (through the fp16 scaler), zero the grads, step the LR."""
        if self.recipe.grad_clip:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _stop_if_non_finite(self, epoch: int, sums: dict[str, torch.Tensor]) -> None:
        """A run stops loudly (NonFiniteError, the last good checkpoint kept) on a non-finite loss or weight."""
        first_bad = int(sums["first_bad"])
        if first_bad >= 0 or not math.isfinite(float(sums["loss"])):
            raise NonFiniteError(f"training loss became non-finite at step {first_bad} of epoch {epoch} (lr "
                                 f"{self.optimizer.param_groups[0]['lr']:.3g}); stopped, {self._kept()}; lower "
                                 "optimizer.lr or set grad_clip")
        bad = self.dist.any_nonfinite(self.model.state_dict())
        if bad:
            raise NonFiniteError(f"weights became non-finite in epoch {epoch} ({', '.join(bad[:3])}); stopped, "
                                 f"{self._kept()}; lower optimizer.lr or set grad_clip")

    def _kept(self) -> str:
        last = self.out_dir / "last"
        return f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written"

    # -------------------------------------------------------------- main
    def run(self) -> TrainResult:
        """Claim ``out_dir`` (exclusive lock, stale-file and recipe checks), set up, train; see the module doc.

        Under torchrun only rank 0 claims and writes the folder; the other ranks only read it (``--resume``)."""
        main = dist_mod.process_rank() == 0
        run_dir = (claim_run_dir(self.out_dir, self.recipe, resume=self.resume, overwrite=self.overwrite) if main
                   else dist_mod.UnclaimedRunDir())
        try:
            return self._run(run_dir)
        finally:
            run_dir.release()
            if getattr(self, "dist", None) is not None:
                self.dist.close()  # leave a process group this run created (torchrun) before returning

    def _run(self, run_dir: RunDir) -> TrainResult:
        """The run, top to bottom: set up, start or resume the folder, train every remaining epoch, finish."""
        self._setup_or_discard(run_dir)
        self._start_folder(run_dir)
        logger = open_logger(self.recipe.log if self.dist.is_main else "none", self.out_dir, self.steps_per_epoch,
                             start_epoch=self.state["epoch"], step_offset=self.start_epoch * self.steps_per_epoch,
                             resume=self.resume)
        self._last_epoch: tuple | None = None  # (val, test, flops) of the last epoch trained in this process
        for epoch in range(self.state["epoch"], self.recipe.epochs):
            self._epoch(epoch, logger)
        logger.close()
        return TrainResult(self.out_dir, self._finish())

    def _epoch(self, epoch: int, logger: Any) -> None:
        """One epoch: train → validate → record → dense model → phase step → persist."""
        t0 = time.perf_counter()
        train = self._train_epoch(epoch)
        train_time = time.perf_counter() - t0
        phase = self._enter_phase(epoch)  # of the model evaluated below
        val, test = self._evaluate()
        rec = self._record(epoch, phase, train, val, test)
        if self.method.yields_dense and phase == "dense" and self._dense_eligible():
            self._track_dense(epoch, val, test)
        self._last_epoch = (val, test, rec.get("inference_flops"))
        self.method.step()  # the epoch's last method step: may compress / decompress
        if phase == "dense" and self.method.phase == "sparse":
            rec["dense_zero_fraction"] = rec["sparsity"]  # zeros left at the end of a dense phase (Table 8)
        self.state["elapsed"] += time.perf_counter() - t0
        rec.update(time=train_time, epoch_time=time.perf_counter() - t0, elapsed=self.state["elapsed"])
        self._persist(epoch, rec, logger)
        if self.progress:
            print(f"epoch {epoch + 1:3d}/{self.recipe.epochs} {phase:6s} loss {train['loss']:.4f} "
                  f"val_acc {val['acc']:.4f} sparsity {rec['sparsity']:.3f} ({rec['epoch_time']:.1f}s)", flush=True)

    def _setup_or_discard(self, run_dir: RunDir) -> None:
        try:
            self.setup()  # a bad recipe or dataset leaves no run folder behind
        except BaseException:
            run_dir.discard()
            raise

    def _start_folder(self, run_dir: RunDir) -> None:
        """Resume from ``last/`` or start fresh (``overwrite`` removes another run's files); write the recipe."""
        if self.resume:
            self._restore()
        elif self.dist.is_main:
            if self.overwrite:
                run_dir.remove_stale(self.recipe)
            for stale in ("metrics.jsonl", "summary.json"):
                (self.out_dir / stale).unlink(missing_ok=True)
        if self.dist.is_main:
            atomic_write_text(self.out_dir / "recipe.yaml", dump_recipe(self.recipe))

    def _enter_phase(self, epoch: int) -> str:
        """The phase of the model about to be evaluated; remembers the epoch its phase started."""
        phase = self._model_phase()
        if phase != self.state.get("phase"):
            self.state["phase"], self.state["phase_start"] = phase, epoch
        return phase

    def _record(self, epoch: int, phase: str, train: dict[str, float], val: dict[str, float],
                test: dict[str, float] | None) -> dict[str, Any]:
        """The epoch's metrics line: losses/accuracies, sparsity, FLOPs, hook values and the pending mask events."""
        rec: dict[str, Any] = {
            "epoch": epoch, "phase": phase, "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": train["loss"], "train_acc": train["acc"],
            "val_loss": val["loss"], "val_acc": val["acc"], "val_samples": len(self.val_loader.dataset),
        }
        if "ppl" in val:
            rec["val_ppl"] = val["ppl"]
        if test is not None:
            rec.update(test_loss=test["loss"], test_acc=test["acc"], test_samples=len(self.test_loader.dataset))
        rec["sparsity"] = self.method.sparsity()
        rec["layer_sparsity"] = self.method.layer_sparsity()
        if self.recipe.measure_flops:
            rec.update(self._flops_record())
        for hook in self.epoch_hooks:
            rec.update(hook(self, epoch) or {})
        rec.update(self._pending)
        self._pending = {}
        return rec

    def _flops_record(self) -> dict[str, float]:
        """Inference FLOPs of the current model and the epoch's training FLOPs relative to a dense epoch."""
        f = float(inference_flops(self.model, self.example))
        tf = self.method.training_flops_per_sample(f, self.f_dense)
        rel_epoch = epoch_training_flops_rel(step_flops_per_sample(f) if tf is None else float(tf), self.f_dense)
        self.state["train_flops_cum"] += rel_epoch
        return {"inference_flops": f, "inference_flops_rel": f / self.f_dense, "dense_inference_flops": self.f_dense,
                "train_flops_epoch_rel": rel_epoch,
                "train_flops_cum_rel": self.state["train_flops_cum"] / self.recipe.epochs,
                "train_flops_samples": len(self.bundle.train)}

    def _persist(self, epoch: int, rec: dict[str, Any], logger: Any) -> None:
        """Append the metrics line (fsync'd; rank 0), log it, then checkpoint the state after this epoch."""
        if self.dist.is_main:
            with open(self.out_dir / "metrics.jsonl", "a") as fh:
                fh.write(strict_json(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            logger.log(rec)
        self.state["epoch"] = epoch + 1
        self._checkpoint()

    def _track_dense(self, epoch: int, val: dict[str, float], test: dict[str, float] | None) -> None:
        """Candidates for the run's dense model: the best (on validation) and the last eligible dense epoch;
        ``dense.safetensors`` holds the one the recipe's ``dense_pick`` names."""
        score = -val["loss"] if self.task == "lm" else val["acc"]
        cand = {"score": score, "epoch": epoch, "val_acc": val["acc"], "val_loss": val["loss"], "phase": "dense",
                "phase_start": self.state.get("phase_start", epoch),
                "compressions_before": self.method.compressions}
        if test is not None:
            cand.update(test_acc=test["acc"], test_loss=test["loss"])
        best = self.state["best_dense"]
        improved = best is None or score > best["score"]
        if improved:
            self.state["best_dense"] = cand
        self.state["last_dense"] = cand
        if improved or self.recipe.dense_pick == "last":
            state = self.dist.full_state_dict(self.model)  # every rank: gathered to rank 0 under FSDP
            if self.dist.is_main:
                meta = {k: v for k, v in cand.items() if k != "score"} | {"pick": self.recipe.dense_pick}
                save_model(self.out_dir / "dense.safetensors", self.model, meta, state=state)

    def _finish(self) -> dict[str, Any]:
        """Finalize the method, save the final (= sparse) model and write ``summary.json``."""
        r = self.recipe
        self.method.finalize()  # a method that changes the model here emits an event (see _final_eval)
        val, test, f = self._final_eval()
        final_sparsity = self.method.sparsity()
        meta = {"epoch": r.epochs - 1, "val_acc": val["acc"], "val_loss": val["loss"], "sparsity": final_sparsity,
                "method": r.method_name}
        state = self.dist.full_state_dict(self.model)  # every rank: gathered to rank 0 under FSDP
        if self.dist.is_main:
            save_model(self.out_dir / "final.safetensors", self.model, meta, state=state)
            if self.method.yields_sparse:  # the final model is the sparse model: same bytes, no second write
                link_or_copy(self.out_dir / "final.safetensors", self.out_dir / "sparse.safetensors")
        summary = self._summary(val, test, final_sparsity)
        if r.measure_flops:
            summary["train_flops_rel"] = self.state["train_flops_cum"] / r.epochs
            summary["inference_flops_rel"] = f / self.f_dense
            summary["dense_inference_flops"] = self.f_dense
        if self.dist.is_main:
            atomic_write_text(self.out_dir / "summary.json", strict_json(summary, indent=2))
        self.dist.barrier()  # files are complete when any rank returns
        return summary

    def _final_eval(self) -> tuple[dict[str, float], dict[str, float] | None, float | None]:
        """(val, test, inference FLOPs) of the final model: the last epoch's, unless a mask event after that
        epoch's validation (its last step, ``finalize``) changed the model, or no epoch ran in this process."""
        val, test, f = self._last_epoch or (None, None, None)
        if val is None or self._pending.get("events"):
            val, test = self._evaluate()
            f = None
        if f is None and self.recipe.measure_flops:
            f = float(inference_flops(self.model, self.example))
        return val, test, f

    def _summary(self, val: dict[str, float], test: dict[str, float] | None, sparsity: float) -> dict[str, Any]:
        """``summary.json`` without the FLOPs: final (and sparse) results, eval sizes, files, the dense model."""
        r = self.recipe
        test_res = {} if test is None else {"test_acc": test["acc"], "test_loss": test["loss"]}
        summary: dict[str, Any] = {
            "name": r.name, "method": r.method_name, "target_sparsity": r.sparsity, "epochs": r.epochs,
            "final": {"val_acc": val["acc"], "val_loss": val["loss"], "sparsity": sparsity, **test_res},
            "eval": {"val_samples": len(self.val_loader.dataset), "pick_on": "val",
                     "report_on": "val" if test is None else "test",
                     **({} if test is None else {"test_samples": len(self.test_loader.dataset)})},
            "files": {"final": "final.safetensors", "metrics": "metrics.jsonl", "last": "last"},
            "wall_time": self.state["elapsed"],
            # what `acdc export` needs to rebuild the architecture without loading the data
            "model_io": {"num_classes": self.bundle.num_classes, "input_shape": list(self.bundle.input_shape),
                         "task": self.task},
        }
        if self.task == "lm":
            summary["final"]["val_ppl"] = math.exp(min(val["loss"], 50.0))
        if self.method.yields_sparse:
            summary["sparse"] = dict(summary["final"])
            summary["files"]["sparse"] = "sparse.safetensors"
        if self.state.get("best_dense"):
            summary.update(self._dense_summary())
            summary["files"]["dense"] = "dense.safetensors"
        return summary

    def _dense_summary(self) -> dict[str, Any]:
        """The run's dense model (``dense``, by the recipe's ``dense_pick``) and both candidates, best and last."""
        r = self.recipe
        rule = (f"{r.dense_pick} dense epoch" + (" on validation" if r.dense_pick == "best" else "")
                + (" after the first compression" if r.dense_from == "after_compression"
                   and self.method.yields_sparse else ""))
        out: dict[str, Any] = {}
        for key in ("best", "last"):
            if self.state.get(f"{key}_dense"):
                out[f"dense_{key}"] = {k: v for k, v in self.state[f"{key}_dense"].items() if k != "score"}
        out["dense"] = dict(out.get(f"dense_{r.dense_pick}", out["dense_best"]), rule=rule)
        return out


def _diff_count(frac: float | None, n: int) -> dict[str, int]:
    """The changed-weight count behind a mask-difference fraction (exact: the fraction is count / n)."""
    return {} if frac is None else {"mask_diff_count": int(round(frac * n)), "mask_size": n}


def train(recipe: Recipe, out_dir: str | Path, *, resume: bool = False, progress: bool | None = None,
          overwrite: bool = False) -> TrainResult:
    """Train ``recipe`` into ``out_dir`` (``--resume`` continues from ``out_dir/last``)."""
    return Trainer(recipe, out_dir, resume=resume, progress=progress, overwrite=overwrite).run()
