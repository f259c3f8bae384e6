"""Data-parallel training (2 gloo ranks) equals a 1-process run with the same global batch; masks agree across
ranks (hash check); pruned weights and optimizer state stay zero; interrupted runs resume across world sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _dist import run_ranks
from torch.utils.data import DataLoader

from acdc.train.checkpoint import load_tensors
from acdc.train.distributed import DistContext, EpochShardSampler, mask_hash
from acdc.train.loop import Trainer
from acdc.train.recipe import parse_recipe


def _raw(optimizer: str = "sgd", **over) -> dict:
    opt = ({"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
           if optimizer == "sgd" else {"name": "adamw", "lr": 0.003, "weight_decay": 0.01})
    raw = {
        "name": "ddp", "seed": 3, "epochs": 5, "batch_size": 64, "eval_batch_size": 512,
        "model": {"name": "mlp", "in_features": 64, "hidden": [64, 32]}, "data": {"name": "digits"},
        "optimizer": opt, "lr_schedule": {"name": "constant"}, "max_steps_per_epoch": 4, "eval_max_batches": 1,
        "measure_flops": False, "progress": False,
        # dense, then a 2-epoch sparse phase (a resume in its middle), dense, sparse
        "method": {"name": "acdc", "sparsity": 0.8,
                   "schedule": {"phases": [["dense", 0, 1], ["sparse", 1, 3], ["dense", 3, 4], ["sparse", 4, 5]]}},
    }
    raw.update(over)
    return raw


class _Stop(Exception):
    pass


def _record(trainer: Trainer, epoch: int) -> dict:
    """Epoch hook: mask hash (every compression lands in some epoch's record) and, in sparse phases, exact zeros
    of pruned weights and of every same-shape optimizer state tensor on this rank."""
    m = trainer.method.masks
    if m is not None:
        for n, p in trainer.method.masked.params.items():
            assert not bool(p.detach()[~m[n]].any()), f"pruned weights of {n} are not zero"
            for k, v in trainer.optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    assert not bool(v[~m[n]].any()), f"optimizer state {k} of {n} is not zero at pruned entries"
    return {"mask_hash": mask_hash(m)}


def _train(rank: int, world: int, raw: dict, out: str, resume: bool = False, stop_after: int | None = None) -> None:
    hooks = [_record]
    if stop_after is not None:
        def stop(trainer: Trainer, epoch: int) -> dict:
            if epoch == stop_after:  # "killed" after this epoch's checkpoint would be written: simulate a crash
                raise _Stop
            return {}
        hooks.append(stop)
    try:
        Trainer(parse_recipe(raw), out, resume=resume, epoch_hooks=hooks).run()
    except _Stop:
        pass


def _metrics(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _compare_runs(a: Path, b: Path, atol: float = 1e-5) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert [r["epoch"] for r in ma] == [r["epoch"] for r in mb]
    assert [r["mask_hash"] for r in ma] == [r["mask_hash"] for r in mb]  # bit-identical masks every epoch
    assert [r["phase"] for r in ma] == [r["phase"] for r in mb]
    for x, y in zip(ma, mb):
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-4
    for f in ("final.safetensors", "dense.safetensors", "last/masks.safetensors"):
        ta, _ = load_tensors(a / f)
        tb, _ = load_tensors(b / f)
        assert ta.keys() == tb.keys()
        for k in ta:
            if ta[k].dtype == torch.bool:
                assert torch.equal(ta[k], tb[k]), (f, k)
            else:
                assert torch.allclose(ta[k], tb[k], rtol=0, atol=atol), (f, k, (ta[k] - tb[k]).abs().max())
                assert torch.equal(ta[k] == 0, tb[k] == 0), (f, k)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_ddp_two_ranks_equals_one_process(tmp_path, optimizer):
    raw = _raw(optimizer)
    Trainer(parse_recipe(raw), tmp_path / "one", epoch_hooks=[_record]).run()
    run_ranks(2, _train, raw, str(tmp_path / "two"))
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len({r["mask_hash"] for r in one}) >= 2  # dense and sparse epochs differ: the comparison can fail
    assert [r["train_acc"] for r in one] == pytest.approx([r["train_acc"] for r in two], abs=1e-9)
    _compare_runs(tmp_path / "one", tmp_path / "two")


def resume_across_world_sizes(tmp_path: Path, raw: dict, train, compare) -> None:
    """Run ``raw`` on 2 ranks uninterrupted; then, for 2->2, 2->1 and 1->2, stop inside the 2-epoch sparse phase
    (after epoch 1's checkpoint), resume on the second world size and ``compare`` with the uninterrupted run.
    ``train(rank, world, raw, out, resume, stop_after)`` runs one rank."""
    run_ranks(2, train, raw, str(tmp_path / "full"))
    for name, first, second in (("2to2", 2, 2), ("2to1", 2, 1), ("1to2", 1, 2)):
        d = str(tmp_path / name)
        if first == 1:
            train(0, 1, raw, d, False, 2)
        else:
            run_ranks(first, train, raw, d, False, 2)
        assert [r["epoch"] for r in _metrics(Path(d))] == [0, 1]
        if second == 1:
            train(0, 1, raw, d, True)
        else:
            run_ranks(second, train, raw, d, True)
        compare(tmp_path / "full", Path(d))


@pytest.mark.slow
def test_ddp_resume_mid_phase_across_world_sizes(tmp_path):
    resume_across_world_sizes(tmp_path, _raw("sgd"), _train, _compare_runs)


def test_sampler_union_is_the_single_process_order():
    seed_fn = lambda e: 7 * 1_000_003 + e  # noqa: E731
    one = list(EpochShardSampler(103, 0, 1, seed_fn))
    g = torch.Generator().manual_seed(seed_fn(0))
    loader = DataLoader(list(range(103)), batch_size=1, shuffle=True, generator=g)
    assert one == [int(x) for x in loader]  # exactly the single-process order for the same seed
    parts = [list(EpochShardSampler(103, r, 3, seed_fn)) for r in range(3)]
    assert all(len(p) == 34 for p in parts)
    b = 6  # global batch 6 = 2 per rank: each global batch is the union of the ranks' local batches
    for i in range(34 // 2):
        assert sorted(x for p in parts for x in p[2 * i : 2 * i + 2]) == sorted(one[b * i : b * i + b])


def test_batch_size_must_divide_world():
    with pytest.raises(ValueError, match=r"`batch_size` \(10\).*world size \(3\)"):
        DistContext(world=3).local_batch(10)


def _diverge(rank: int, world: int) -> None:
    ctx = DistContext(world, rank)
    same = {"w": torch.tensor([True, False, True])}
    ctx.check_masks(same, "test")  # equal masks pass
    ctx.check_masks(None, "dense")
    other = {"w": torch.tensor([True, rank == 1, True])}
    with pytest.raises(RuntimeError, match="masks differ across ranks at compress"):
        ctx.check_masks(other, "compress (step 5)")
    assert dist.get_world_size() == world


def _bad_input(rank: int, world: int, out: str) -> None:
    with pytest.raises(ValueError, match=r"`batch_size` \(63\).*world size \(2\)"):
        Trainer(parse_recipe(_raw(batch_size=63)), out).run()
    with pytest.raises(ValueError, match="`method.name: rigl` is not supported with `distributed.strategy: fsdp`"):
        Trainer(parse_recipe(_raw(distributed={"strategy": "fsdp"}, method={"name": "rigl", "sparsity": 0.8})),
                out).run()
    assert not (Path(out) / "metrics.jsonl").exists() and not (Path(out) / "last").exists()


def test_mask_hash_check_catches_divergence():
    run_ranks(2, _diverge)


def test_bad_distributed_input_fails_before_training(tmp_path):
    run_ranks(2, _bad_input, str(tmp_path / "bad"))


_BASELINES = {"gmp": {"start_epoch": 0, "end_epoch": 3, "update_every": 2}, "rigl": {"update_every": 3},
              "topkast": {"update_every": 3, "l2": 1e-2}}


def _hash(trainer: Trainer, epoch: int) -> dict:
    return {"mask_hash": mask_hash(trainer.method.masks)}


def _train_baselines(rank: int, world: int, raws: list[dict], outs: list[str]) -> None:
    for raw, out in zip(raws, outs):
        Trainer(parse_recipe(raw), out, epoch_hooks=[_hash]).run()


def test_ddp_baselines_two_ranks_equal_one_process(tmp_path):
    """GMP, RigL (gradient growth) and Top-KAST under 2-rank DDP: masks bit-identical to a 1-process run at every
    epoch, with in-phase mask updates; final weights within 1e-5."""
    raws = [_raw(method={"name": m, "sparsity": 0.8, **opts}) for m, opts in _BASELINES.items()]
    for m, raw in zip(_BASELINES, raws):
        Trainer(parse_recipe(raw), tmp_path / f"one-{m}", epoch_hooks=[_hash]).run()
    run_ranks(2, _train_baselines, raws, [str(tmp_path / f"two-{m}") for m in _BASELINES])
    for m in _BASELINES:
        one, two = _metrics(tmp_path / f"one-{m}"), _metrics(tmp_path / f"two-{m}")
        assert sum(len(r.get("mask_updates", [])) for r in one) >= 2, m  # masks changed inside the run
        assert len({r["mask_hash"] for r in one}) >= 3, m
        assert [r["mask_hash"] for r in one] == [r["mask_hash"] for r in two], m
        assert [r.get("mask_updates") for r in one] == [r.get("mask_updates") for r in two], m
        ta, _ = load_tensors(tmp_path / f"one-{m}" / "final.safetensors")
        tb, _ = load_tensors(tmp_path / f"two-{m}" / "final.safetensors")
        for k in ta:
            assert torch.allclose(ta[k], tb[k], rtol=0, atol=1e-5), (m, k, (ta[k] - tb[k]).abs().max())
            assert torch.equal(ta[k] == 0, tb[k] == 0), (m, k)
